//! trestle on Kubernetes, checked without a cluster: [`manifest`] reads `deploy/`'s kustomize trees into plain
//! objects, and the tests check them against the Kubernetes schemas and trestle's own policy, then run the
//! DaemonSet's containers on Docker "nodes" the way a kubelet would.

pub mod manifest;
