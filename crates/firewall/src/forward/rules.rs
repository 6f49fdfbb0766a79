//! What trestle keeps in a host's iptables `filter` table so that its networks' traffic passes a `FORWARD`
//! policy of `DROP`, independent of the backend (nf_tables or legacy x_tables) that holds the table: the rules,
//! and the plan that takes a table from what it holds to what is wanted.
//!
//! The layout, in `iptables -S` terms (`ip6tables` alike for IPv6 subnets):
//! ```text
//! -N TRESTLE-FORWARD
//! -I FORWARD 1 -m comment --comment "trestle: pod networks" -j TRESTLE-FORWARD
//! -A TRESTLE-FORWARD -s 10.15.20.0/24 -m comment --comment "trestle mynet 10.15.20.0/24" -j ACCEPT
//! -A TRESTLE-FORWARD -d 10.15.20.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "trestle mynet 10.15.20.0/24" -j ACCEPT
//! ```
//! A pod's own packets pass (to its neighbours on the bridge, which `br_netfilter` sends through `FORWARD`, and
//! to the outside), and packets to a pod only when they belong to a connection it is part of. Nothing else is
//! accepted; the policy and every other rule stay as they are.

use crate::names::network_id;
use crate::nft::COMMENT_MAX;
use ipnet::IpNet;

/// The user chain holding every network's rules.
pub(crate) const CHAIN: &str = "TRESTLE-FORWARD";
/// The comment of the one jump from `FORWARD` into [`CHAIN`].
pub(crate) const JUMP_COMMENT: &str = "trestle: pod networks";
/// The built-in chain the jump sits in.
pub(crate) const FORWARD: &str = "FORWARD";
/// The chain Docker keeps for the administrator's own rules, jumped to from the top of `FORWARD`: trestle's jump
/// goes right after Docker's, so that those rules still see the pods' traffic first.
pub(crate) const DOCKER_USER: &str = "DOCKER-USER";

/// The comment of a subnet's rules: `trestle <network> <subnet>`. A name too long for the comment is cut and
/// ends in `~` and its [`network_id`], so that two long names sharing a prefix never share rules.
pub(crate) fn comment(network: &str, subnet: IpNet) -> String {
    let subnet = subnet.trunc().to_string();
    let room = COMMENT_MAX - "trestle  ".len() - subnet.len();
    let network = network.replace('\0', "");
    if network.len() <= room {
        return format!("trestle {network} {subnet}");
    }
    let id = format!("~{}", network_id(&network));
    let mut cut = room - id.len();
    while !network.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("trestle {}{id} {subnet}", &network[..cut])
}

/// Where a rule sits in `FORWARD`: its position (0 for the first rule) and, for nf_tables, its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// Position among `FORWARD`'s rules.
    pub(crate) index: usize,
    /// The nf_tables rule handle (0 for legacy tables, which have none).
    pub(crate) handle: u64,
}

/// Which packets a rule accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// `-s <subnet>`: everything a pod of the subnet sends.
    From,
    /// `-d <subnet> -m conntrack --ctstate RELATED,ESTABLISHED`: answers to the pods.
    RepliesTo,
}

/// One rule of [`CHAIN`], identified by what it matches and its comment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rule {
    /// What it accepts.
    pub(crate) kind: Kind,
    /// The subnet (host bits clear).
    pub(crate) subnet: IpNet,
    /// `trestle <network> <subnet>`.
    pub(crate) comment: String,
}

impl Rule {
    /// Whether this rule is one of `network`'s (by its comment's network part).
    pub(crate) fn of(&self, network: &str) -> bool {
        self.comment == comment(network, self.subnet)
    }
}

/// The rules `network` needs for `subnets` (distinct, host bits clear), in the order they are added.
pub(crate) fn wanted(network: &str, subnets: &[IpNet]) -> Vec<Rule> {
    subnets
        .iter()
        .flat_map(|&subnet| {
            [Kind::From, Kind::RepliesTo].map(|kind| Rule {
                kind,
                subnet,
                comment: comment(network, subnet),
            })
        })
        .collect()
}

/// What one family's `filter` table holds of trestle's, as read from either backend. `H` is how the backend
/// names a rule for deletion (an nf_tables handle; the rule itself for legacy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View<H> {
    /// `FORWARD`'s policy is `DROP`.
    pub(crate) drops: bool,
    /// [`CHAIN`] exists.
    pub(crate) chain: bool,
    /// The jumps from `FORWARD` to [`CHAIN`] carrying [`JUMP_COMMENT`] (normally none or one).
    pub(crate) jumps: Vec<H>,
    /// The trestle rules in [`CHAIN`].
    pub(crate) rules: Vec<(Rule, H)>,
    /// How many other rules [`CHAIN`] holds, or jump to it from `FORWARD` (someone else's): the chain is then
    /// never deleted.
    pub(crate) foreign: usize,
    /// Docker's jump to [`DOCKER_USER`] in `FORWARD`, if any: trestle's jump goes after it.
    pub(crate) docker_user: Option<Anchor>,
}

/// One change to a `filter` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op<H> {
    /// Create [`CHAIN`].
    NewChain,
    /// Insert the jump into `FORWARD`: right after the given rule (Docker's jump to [`DOCKER_USER`]), else first.
    InsertJump(Option<Anchor>),
    /// Append a rule to [`CHAIN`].
    Append(Rule),
    /// Delete a rule of [`CHAIN`].
    Delete(H),
    /// Delete a jump from `FORWARD`.
    DeleteJump(H),
    /// Delete [`CHAIN`] (empty by then).
    DeleteChain,
}

/// ADD: the changes that add whichever of `want` are missing, with the chain and the jump if they are missing.
/// Nothing is ever removed here (another attachment of the network may use another subnet), and only a table
/// whose `FORWARD` drops gets rules.
pub(crate) fn plan_ensure<H: Clone>(view: &View<H>, want: &[Rule]) -> Vec<Op<H>> {
    if !view.drops {
        return Vec::new();
    }
    let missing: Vec<&Rule> = want
        .iter()
        .filter(|w| !view.rules.iter().any(|(r, _)| r == *w))
        .collect();
    let mut ops = Vec::new();
    if !view.chain && !missing.is_empty() {
        ops.push(Op::NewChain);
    }
    ops.extend(missing.into_iter().cloned().map(Op::Append));
    if view.jumps.is_empty() && (view.chain || !ops.is_empty()) {
        ops.push(Op::InsertJump(view.docker_user));
    }
    ops
}

/// DEL of the last attachment, or GC: the changes that delete every rule of `network`, and the chain and its
/// jump when no other network's rule is left, whatever the policy is now (the administrator may have changed it).
pub(crate) fn plan_remove<H: Clone>(view: &View<H>, network: &str) -> Vec<Op<H>> {
    let mut ops: Vec<Op<H>> = Vec::new();
    let mut left = 0;
    for (rule, handle) in &view.rules {
        if rule.of(network) {
            ops.push(Op::Delete(handle.clone()));
        } else {
            left += 1;
        }
    }
    if left == 0 && view.foreign == 0 && (view.chain || !view.jumps.is_empty()) {
        ops.extend(view.jumps.iter().cloned().map(Op::DeleteJump));
        if view.chain {
            ops.push(Op::DeleteChain);
        }
    }
    ops
}

/// CHECK: the first of `want` missing from a table whose `FORWARD` drops, or `None` when the table needs nothing
/// or has it all (the jump included).
pub(crate) fn first_missing<'a, H>(view: &View<H>, want: &'a [Rule]) -> Option<&'a Rule> {
    if !view.drops {
        return None;
    }
    want.iter()
        .find(|w| view.jumps.is_empty() || !view.rules.iter().any(|(r, _)| r == *w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn view(drops: bool, rules: Vec<Rule>) -> View<u64> {
        View {
            drops,
            chain: !rules.is_empty(),
            jumps: if rules.is_empty() { vec![] } else { vec![1] },
            rules: rules.into_iter().zip(10..).collect(),
            foreign: 0,
            docker_user: None,
        }
    }

    #[test]
    fn the_first_network_makes_chain_rules_and_jump() {
        let want = wanted("a", &[net("10.1.0.0/24")]);
        assert_eq!(want.len(), 2);
        let ops = plan_ensure(&view(true, vec![]), &want);
        assert_eq!(
            ops,
            [
                Op::NewChain,
                Op::Append(want[0].clone()),
                Op::Append(want[1].clone()),
                Op::InsertJump(None)
            ]
        );
        assert_eq!(first_missing(&view(true, vec![]), &want), Some(&want[0]));
    }

    #[test]
    fn a_complete_network_changes_nothing_and_nothing_is_added_without_a_drop() {
        let want = wanted("a", &[net("10.1.0.0/24")]);
        assert!(plan_ensure(&view(true, want.clone()), &want).is_empty());
        assert!(plan_ensure(&view(false, vec![]), &want).is_empty());
        assert_eq!(first_missing(&view(true, want.clone()), &want), None);
        assert_eq!(first_missing(&view(false, vec![]), &want), None);
    }

    #[test]
    fn another_subnet_of_the_network_is_added_beside_the_first() {
        let a = wanted("a", &[net("10.1.0.0/24")]);
        let a2 = wanted("a", &[net("10.9.0.0/24")]);
        let ops = plan_ensure(&view(true, a), &a2);
        assert_eq!(ops, [Op::Append(a2[0].clone()), Op::Append(a2[1].clone())]);
    }

    #[test]
    fn the_last_network_takes_chain_and_jump_with_it_and_others_stay() {
        let a = wanted("a", &[net("10.1.0.0/24")]);
        let b = wanted("b", &[net("10.2.0.0/24")]);
        let both = view(true, [a.clone(), b.clone()].concat());
        assert_eq!(plan_remove(&both, "a"), [Op::Delete(10), Op::Delete(11)]);
        let last = [
            Op::Delete(10),
            Op::Delete(11),
            Op::DeleteJump(1),
            Op::DeleteChain,
        ];
        assert_eq!(plan_remove(&view(true, a.clone()), "a"), last);
        // A policy no longer DROP: the rules go all the same.
        assert_eq!(plan_remove(&view(false, a), "a"), last);
        assert!(plan_remove(&view(true, vec![]), "a").is_empty());
        // A rule of someone else's in the chain keeps chain and jump.
        let mut v = view(true, wanted("a", &[net("10.1.0.0/24")]));
        v.foreign = 1;
        assert_eq!(plan_remove(&v, "a"), [Op::Delete(10), Op::Delete(11)]);
    }

    #[test]
    fn the_jump_goes_after_dockers() {
        let a = wanted("a", &[net("10.1.0.0/24")]);
        let mut v = view(true, vec![]);
        let anchor = Anchor {
            index: 0,
            handle: 7,
        };
        v.docker_user = Some(anchor);
        assert_eq!(
            plan_ensure(&v, &a).last(),
            Some(&Op::InsertJump(Some(anchor)))
        );
    }

    #[test]
    fn long_names_keep_distinct_comments_that_fit() {
        let s = net("fd00:1:2:3::/64");
        let (a, b) = ("n".repeat(200) + "a", "n".repeat(200) + "b");
        let (ca, cb) = (comment(&a, s), comment(&b, s));
        assert_ne!(ca, cb);
        assert!(
            ca.len() <= COMMENT_MAX && ca.ends_with(" fd00:1:2:3::/64"),
            "{ca}"
        );
        assert_eq!(
            comment("mynet", net("10.1.0.9/24")),
            "trestle mynet 10.1.0.0/24"
        );
        assert!(comment(&"é".repeat(100), s).len() <= COMMENT_MAX);
    }

    #[test]
    fn a_lost_jump_is_put_back_and_reported() {
        let a = wanted("a", &[net("10.1.0.0/24")]);
        let mut v = view(true, a.clone());
        v.jumps.clear();
        assert_eq!(plan_ensure(&v, &a), [Op::InsertJump(None)]);
        assert_eq!(first_missing(&v, &a), Some(&a[0]));
    }
}
