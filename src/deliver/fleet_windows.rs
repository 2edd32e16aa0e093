//! Fleet mode at delivery time: what a queued notification that opens or sums up a burst
//! window becomes for the whole fleet (see `fleet::windows` for the protocol).

use std::time::Duration;

use super::SpaceWorker;
use crate::clock::unix_now_ms;
use crate::fleet::Fleet;
use crate::fleet::windows::{Claim, LEASE, Part, SETTLE};
use crate::pipeline::bursts::summary_text;
use crate::pipeline::rules::BurstMark;
use crate::store::outbox::Batch;

/// The window whose summary a post is: marked done once Chat accepted it.
pub(super) struct SummaryDone {
    pub rule: String,
    pub key: String,
    pub claim: Claim,
}

/// What to do with a batch that carries a burst mark.
pub(super) enum Decision {
    /// Post it, with this text instead of its own when given; after Chat accepted it,
    /// mark this window's summary as done.
    Post {
        text: Option<String>,
        done: Option<SummaryDone>,
    },
    /// Another agent posts for the fleet: remove it without posting.
    Drop,
    /// The worker is stopping; the row stays queued.
    Stop,
}

impl SpaceWorker {
    /// Decides what `batch` (one notification with `mark`) becomes. Any Redis trouble
    /// posts it as it is: at worst a message more, never one less.
    pub(super) async fn fleet_decision(
        &mut self,
        fleet: &Fleet,
        batch: &Batch,
        mark: BurstMark,
    ) -> Decision {
        let post_as_is = Decision::Post {
            text: None,
            done: None,
        };
        let agent = self.outbox.agent_id().to_owned();
        let Some(rule) = batch.rules.first().cloned() else {
            return post_as_is;
        };
        match mark {
            BurstMark::First {
                key,
                window_ms,
                line,
                first_ms,
            } => {
                let Ok(claim) = fleet.claim_window(&agent, &rule, &key, window_ms).await else {
                    return post_as_is;
                };
                if claim.owner == agent {
                    return post_as_is;
                }
                let part = Part {
                    unposted_first: 1,
                    repeats: 0,
                    last_ms: first_ms,
                    host: self.host.clone(),
                    last_line: line,
                };
                match fleet.report_part(&agent, &rule, &key, &claim, &part).await {
                    Ok(()) => {
                        tracing::debug!(
                            rule,
                            owner = claim.owner,
                            "Fleet: another agent posts this window's first message."
                        );
                        // Remembered so that, should Redis be lost before the summary,
                        // this host's own summary still counts it.
                        self.unposted_firsts.insert((rule, key));
                        Decision::Drop
                    }
                    Err(_) => post_as_is,
                }
            }
            BurstMark::Summary {
                key,
                first_ms,
                count,
                last_ms,
                last_line,
            } => {
                // Without Redis, this host's own summary, counting its first occurrence
                // too when another host posted it.
                let unposted = self.unposted_firsts.remove(&(rule.clone(), key.clone()));
                let own_text = unposted
                    .then(|| summary_text(&rule, count + 1, last_ms - first_ms, &last_line, &[]));
                let local = || Decision::Post {
                    text: own_text.clone(),
                    done: None,
                };
                let Ok(Some(claim)) = fleet.window_owner(&rule, &key).await else {
                    return local();
                };
                let owner = claim.owner == agent;
                let part = Part {
                    unposted_first: u64::from(!owner),
                    repeats: count,
                    last_ms,
                    host: self.host.clone(),
                    last_line,
                };
                if fleet
                    .report_part(&agent, &rule, &key, &claim, &part)
                    .await
                    .is_err()
                {
                    return local();
                }
                let end = claim.first_ms.saturating_add(claim.window_ms);
                let settle = i64::try_from(SETTLE.as_millis()).unwrap_or(0);
                let lease = i64::try_from(LEASE.as_millis()).unwrap_or(0);
                if owner {
                    if !self.sleep_until_ms(end + settle).await {
                        return Decision::Stop;
                    }
                } else {
                    // The owner posts; wait for its mark, then take over if none came.
                    loop {
                        match fleet.window_done(&rule, &key, &claim).await {
                            Ok(true) => return Decision::Drop,
                            Ok(false) => {}
                            Err(_) => return local(),
                        }
                        if unix_now_ms() >= end + settle + lease {
                            break;
                        }
                        if !self.sleep_or_stop(Duration::from_secs(1)).await {
                            return Decision::Stop;
                        }
                    }
                    match fleet.take_summary(&agent, &rule, &key, &claim).await {
                        Ok(true) => {
                            tracing::info!(
                                rule,
                                owner = claim.owner,
                                "Fleet: the window's owner posted no summary; posting it instead."
                            );
                        }
                        Ok(false) => return Decision::Drop,
                        Err(_) => return local(),
                    }
                }
                match fleet.window_totals(&rule, &key, &claim).await {
                    Ok(totals) if totals.more > 0 => Decision::Post {
                        text: Some(summary_text(
                            &rule,
                            totals.more,
                            totals.last_ms - claim.first_ms,
                            &totals.last_line,
                            &totals.hosts,
                        )),
                        done: Some(SummaryDone { rule, key, claim }),
                    },
                    Ok(_) => Decision::Drop,
                    Err(_) => local(),
                }
            }
        }
    }

    /// Sleeps until the wall clock reads `at_ms`; false when the worker must stop.
    async fn sleep_until_ms(&mut self, at_ms: i64) -> bool {
        let wait = u64::try_from(at_ms.saturating_sub(unix_now_ms())).unwrap_or(0);
        wait == 0 || self.sleep_or_stop(Duration::from_millis(wait)).await
    }
}
