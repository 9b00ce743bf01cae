//! Several ranks in one process: each rank's partitioned graph runs on its own thread,
//! and the collectives meet through a shared mailbox ([`Simulated`]). This is how a
//! partitioned graph is checked against the unpartitioned one without MPI.
//!
//! A rank that fails marks the mailbox failed, so its peers waiting in an exchange get
//! an error instead of waiting forever; the first rank's own error is the one reported.

use super::collective::Comm;
use super::{run_with_comm, State};
use crate::ir::Graph;
use crate::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};

/// Runs `graphs[r]` as rank r on `weights[r]` with `states[r]`, all on the same inputs;
/// returns each rank's outputs, or the first failing rank's error.
pub fn simulate(
    graphs: &[Graph],
    weights: &[Vec<Tensor>],
    inputs: &BTreeMap<String, Tensor>,
    states: &mut [State],
) -> Result<Vec<BTreeMap<String, Tensor>>, String> {
    let ranks = graphs.len();
    if weights.len() != ranks || states.len() != ranks {
        return Err(format!(
            "{ranks} graphs, {} weight sets and {} states",
            weights.len(),
            states.len()
        ));
    }
    let mailbox = Mailbox::new(ranks);
    let results: Vec<Result<BTreeMap<String, Tensor>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = states
            .iter_mut()
            .enumerate()
            .map(|(rank, state)| {
                let (g, w, mailbox) = (&graphs[rank], &weights[rank], &mailbox);
                s.spawn(move || {
                    let comm = Simulated { rank, mailbox };
                    let out = run_with_comm(g, w, inputs, state, &comm);
                    if let Err(e) = &out {
                        mailbox.fail(rank, e);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a rank panicked".into())))
            .collect()
    });
    let failed = mailbox.first_failure();
    let mut outputs = Vec::with_capacity(ranks);
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(o) => outputs.push(o),
            Err(e) => return Err(failed.unwrap_or_else(|| format!("rank {rank}: {e}"))),
        }
    }
    Ok(outputs)
}

/// One rank's view of the shared mailbox.
struct Simulated<'a> {
    rank: usize,
    mailbox: &'a Mailbox,
}

impl Comm for Simulated<'_> {
    fn ranks(&self) -> usize {
        self.mailbox.ranks
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn exchange(&self, send: Vec<TensorData>) -> Result<Vec<TensorData>, String> {
        self.mailbox.exchange(self.rank, send)
    }
}

/// The exchange in two phases: every rank deposits its row of messages, then every rank
/// collects its column; the next exchange starts once all have collected.
struct Mailbox {
    ranks: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

struct Round {
    /// `sent[s][d]`: what rank s sends rank d this round.
    sent: Vec<Vec<Option<TensorData>>>,
    deposited: usize,
    collected: usize,
    collecting: bool,
    /// The first rank that failed, and its error.
    failed: Option<(usize, String)>,
}

impl Mailbox {
    fn new(ranks: usize) -> Mailbox {
        Mailbox {
            ranks,
            round: Mutex::new(Round {
                sent: vec![Vec::new(); ranks],
                deposited: 0,
                collected: 0,
                collecting: false,
                failed: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn fail(&self, rank: usize, error: &str) {
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        round
            .failed
            .get_or_insert_with(|| (rank, format!("rank {rank}: {error}")));
        self.changed.notify_all();
    }

    fn first_failure(&self) -> Option<String> {
        let round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        round.failed.as_ref().map(|(_, e)| e.clone())
    }

    fn exchange(&self, rank: usize, send: Vec<TensorData>) -> Result<Vec<TensorData>, String> {
        if send.len() != self.ranks {
            return Err(format!(
                "rank {rank} sends {} messages to {} ranks",
                send.len(),
                self.ranks
            ));
        }
        let mut round = self.wait(|r| !r.collecting)?;
        round.sent[rank] = send.into_iter().map(Some).collect();
        round.deposited += 1;
        if round.deposited == self.ranks {
            round.collecting = true;
            self.changed.notify_all();
        }
        drop(round);
        let mut round = self.wait(|r| r.collecting)?;
        let mut got = Vec::with_capacity(self.ranks);
        for source in 0..self.ranks {
            match round.sent[source][rank].take() {
                Some(m) => got.push(m),
                None => return Err(format!("rank {rank} collected twice from rank {source}")),
            }
        }
        round.collected += 1;
        if round.collected == self.ranks {
            round.deposited = 0;
            round.collected = 0;
            round.collecting = false;
            self.changed.notify_all();
        }
        Ok(got)
    }

    /// The round once `ready` holds, or an error once a rank has failed.
    fn wait(
        &self,
        ready: impl Fn(&Round) -> bool,
    ) -> Result<std::sync::MutexGuard<'_, Round>, String> {
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((rank, _)) = &round.failed {
                return Err(format!("rank {rank} failed"));
            }
            if ready(&round) {
                return Ok(round);
            }
            round = self.changed.wait(round).unwrap_or_else(|p| p.into_inner());
        }
    }
}
