//! Convergence per revision: for each of an instance's last revisions, which gateway
//! nodes it had to reach, which it reached, and how long the last one took; and the
//! spread of those times (nearest-rank p50, p99, max) over the converged ones.
//!
//! The rule (also in `docs/api.md`):
//!
//! - A revision must reach the nodes online when it was committed: first seen by the
//!   admin at or before the commit and not gone then (`gateway_nodes`, admin clock).
//!   A node that appears later is not waited for (it starts on a later revision
//!   anyway). A node that goes before reaching it is not waited for once gone; one
//!   that reached it and then went still counts as reached.
//! - A node reaches a revision with its first report of that revision or of any later
//!   one (a node may jump from R to R+3 between two polls: R+1 and R+2 are reached
//!   then too), at that report's `applied_at_ms`, the node's own clock.
//! - `took_ms` is from the commit (admin clock) to the last expected node reaching it
//!   (node clocks), so clock skew between them shows up in it; a node clock behind the
//!   admin's could make it negative, and it is clamped at 0.
//! - A revision without a known commit time (committed before the admin kept them)
//!   expects no node and never counts as converged.
//!
//! Pure: the database gives the inputs (`db::convergence`), this module the answer.

use std::collections::HashMap;

use model::snapshot::Revision;

use crate::db::{ConvergenceInputs, NodeReport, NodeSpan, RevisionCommit};

/// The instance's last revisions and how each converged.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ConvergenceHistory {
    /// The instance's latest revision.
    pub revision: Revision,
    /// The revisions asked for, newest first.
    pub items: Vec<RevisionConvergence>,
    /// Over the converged ones among `items` with a known time.
    pub summary: ConvergenceSummary,
}

/// How one revision reached the nodes it had to reach.
#[derive(Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RevisionConvergence {
    pub revision: Revision,
    /// When it was committed (unix milliseconds, the admin's clock), if known.
    pub committed_at_ms: Option<i64>,
    /// The nodes it had to reach: online when it was committed, less those that went
    /// before reaching it.
    pub expected: usize,
    /// Of those, the nodes that reported it or a later revision.
    pub reached: usize,
    /// Every expected node reached it (and at least one was expected).
    pub converged: bool,
    /// Once converged: from the commit to the last expected node swapping it (or a
    /// later revision) in, by the nodes' clocks, at least 0; `None` when a time is
    /// unknown.
    pub took_ms: Option<i64>,
    /// The expected nodes that have not reached it, by id.
    pub behind: Vec<String>,
}

/// The spread of the convergence times of the converged revisions listed.
#[derive(Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ConvergenceSummary {
    /// How many listed revisions converged with a known time (what the rest is over).
    pub count: usize,
    /// Nearest-rank percentiles of `took_ms`: the smallest time at least p% of them are
    /// at or below (the ⌈p·count/100⌉-th smallest). `None` when `count` is 0.
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// The history of `inputs`' revisions, as the module's rule says.
pub(crate) fn history(latest: Revision, inputs: &ConvergenceInputs) -> ConvergenceHistory {
    // Each node's reports in the order the admin saw them.
    let mut reports: HashMap<&str, Vec<&NodeReport>> = HashMap::new();
    for report in &inputs.reports {
        reports.entry(&report.node_id).or_default().push(report);
    }
    let items: Vec<RevisionConvergence> = inputs
        .revisions
        .iter()
        .map(|commit| revision(commit, &inputs.nodes, &reports))
        .collect();
    let mut times: Vec<i64> = items
        .iter()
        .filter(|i| i.converged)
        .filter_map(|i| i.took_ms)
        .collect();
    times.sort_unstable();
    ConvergenceHistory {
        revision: latest,
        summary: ConvergenceSummary {
            count: times.len(),
            p50_ms: nearest_rank(&times, 50),
            p99_ms: nearest_rank(&times, 99),
            max_ms: times.last().copied(),
        },
        items,
    }
}

fn revision(
    commit: &RevisionCommit,
    nodes: &[NodeSpan],
    reports: &HashMap<&str, Vec<&NodeReport>>,
) -> RevisionConvergence {
    let mut expected = 0;
    let mut reached_at: Vec<i64> = Vec::new();
    let mut behind = Vec::new();
    if let Some(committed) = commit.committed_at_ms {
        for node in nodes {
            let online_then =
                node.first_seen_ms <= committed && node.gone_at_ms.is_none_or(|g| g > committed);
            if !online_then {
                continue;
            }
            let reach = reports.get(node.node_id.as_str()).and_then(|list| {
                list.iter()
                    .find(|r| r.revision >= commit.revision)
                    .map(|r| r.applied_at_ms)
            });
            match reach {
                Some(at) => {
                    expected += 1;
                    reached_at.push(at);
                }
                // Gone without reaching it: no longer waited for.
                None if node.gone_at_ms.is_some() => {}
                None => {
                    expected += 1;
                    behind.push(node.node_id.clone());
                }
            }
        }
    }
    let converged = expected > 0 && behind.is_empty();
    let took_ms = match (converged, commit.committed_at_ms) {
        (true, Some(committed)) if reached_at.iter().all(|&at| at > 0) => reached_at
            .iter()
            .max()
            .map(|&last| (last - committed).max(0)),
        _ => None,
    };
    RevisionConvergence {
        revision: commit.revision,
        committed_at_ms: commit.committed_at_ms,
        expected,
        reached: reached_at.len(),
        converged,
        took_ms,
        behind,
    }
}

/// The nearest-rank `p`th percentile of `sorted` (ascending): its ⌈p·n/100⌉-th value.
fn nearest_rank(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(revision: u64, at: i64) -> RevisionCommit {
        RevisionCommit {
            revision: Revision(revision),
            committed_at_ms: Some(at),
        }
    }

    fn span(node_id: &str, first_seen_ms: i64, gone_at_ms: Option<i64>) -> NodeSpan {
        NodeSpan {
            node_id: node_id.into(),
            first_seen_ms,
            gone_at_ms,
        }
    }

    fn report(node_id: &str, revision: u64, applied_at_ms: i64) -> NodeReport {
        NodeReport {
            node_id: node_id.into(),
            revision: Revision(revision),
            applied_at_ms,
            // Seen by the admin a little after the node swapped it in.
            reported_at_ms: applied_at_ms + 50,
        }
    }

    /// One revision's (expected, reached, converged, took_ms, behind).
    fn row(r: &RevisionConvergence) -> (usize, usize, bool, Option<i64>, Vec<&str>) {
        (
            r.expected,
            r.reached,
            r.converged,
            r.took_ms,
            r.behind.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn each_revision_waits_for_the_nodes_online_at_its_commit() {
        let inputs = ConvergenceInputs {
            // Newest first.
            revisions: vec![
                commit(5, 5_000),
                commit(4, 4_000),
                commit(3, 3_000),
                commit(2, 2_000),
                RevisionCommit {
                    revision: Revision(1),
                    committed_at_ms: None,
                },
            ],
            nodes: vec![
                // Online throughout.
                span("a", 0, None),
                // Appeared after revision 3 was committed.
                span("late", 3_500, None),
                // Went at 3 800 having reached 2, never 3.
                span("gone", 0, Some(3_800)),
                // Online throughout, stuck on 4.
                span("slow", 0, None),
            ],
            reports: vec![
                report("a", 2, 2_030),
                report("gone", 2, 2_090),
                report("slow", 2, 2_010),
                report("a", 3, 3_020),
                report("slow", 3, 3_100),
                report("late", 3, 3_500),
                // "a" and "late" jump from 3 to 5: 4 is reached by that report.
                report("slow", 4, 3_990), // its clock runs behind the admin's
                report("a", 5, 5_040),
                report("late", 5, 5_060),
            ],
        };
        let h = history(Revision(5), &inputs);
        let rows: Vec<_> = h.items.iter().map(row).collect();
        assert_eq!(
            rows,
            vec![
                // 5: a, late and slow expected; slow is still on 4.
                (3, 2, false, None, vec!["slow"]),
                // 4: a and late through their reports of 5, slow by its report of 4
                // (before the commit by its clock); gone had gone.
                (3, 3, true, Some(1_060), vec![]),
                // 3: late appeared after its commit; gone went without reaching it.
                (2, 2, true, Some(100), vec![]),
                // 2: everyone online then, gone included (it reached 2 before going).
                (3, 3, true, Some(90), vec![]),
                // No commit time: nothing expected, not converged.
                (0, 0, false, None, vec![]),
            ]
        );
        assert_eq!(h.revision, Revision(5));
        assert_eq!(
            h.summary,
            ConvergenceSummary {
                count: 3,
                p50_ms: Some(100),
                p99_ms: Some(1_060),
                max_ms: Some(1_060),
            }
        );
    }

    #[test]
    fn a_clock_behind_the_admins_gives_zero_and_an_unknown_time_none() {
        let inputs = ConvergenceInputs {
            revisions: vec![commit(2, 2_000), commit(1, 1_000)],
            nodes: vec![span("a", 0, None)],
            reports: vec![report("a", 1, 0), report("a", 2, 1_990)],
        };
        let h = history(Revision(2), &inputs);
        assert_eq!(row(&h.items[0]), (1, 1, true, Some(0), vec![]));
        // Converged, but the node did not say when it swapped revision 1 in.
        assert_eq!(row(&h.items[1]), (1, 1, true, None, vec![]));
        assert_eq!(h.summary.count, 1);
    }

    #[test]
    fn no_nodes_or_no_revisions() {
        let h = history(Revision(0), &ConvergenceInputs::default());
        assert!(h.items.is_empty());
        assert_eq!(
            (h.summary.count, h.summary.p50_ms, h.summary.max_ms),
            (0, None, None)
        );
        let inputs = ConvergenceInputs {
            revisions: vec![commit(1, 1_000)],
            ..ConvergenceInputs::default()
        };
        assert_eq!(
            row(&history(Revision(1), &inputs).items[0]),
            (0, 0, false, None, vec![])
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<i64> = (1..=100).collect();
        for (values, p, want) in [
            (&[][..], 50, None),
            (&[7][..], 50, Some(7)),
            (&[7][..], 99, Some(7)),
            (&[1, 2][..], 50, Some(1)),
            (&[1, 2][..], 99, Some(2)),
            (&[1, 2, 3][..], 50, Some(2)),
            (&[1, 2, 3, 4][..], 50, Some(2)),
            (&hundred[..], 50, Some(50)),
            (&hundred[..], 99, Some(99)),
            (&hundred[..], 100, Some(100)),
        ] {
            assert_eq!(nearest_rank(values, p), want, "{values:?} p{p}");
        }
    }
}
