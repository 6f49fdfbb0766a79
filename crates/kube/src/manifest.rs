//! Reading `deploy/`'s kustomize trees.
