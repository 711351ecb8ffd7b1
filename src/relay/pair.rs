//! What the end of one direction means for its pair: EOF delivered shuts down the
//! destination's write side (half-close) and ends the pair once the other direction has
//! too; an error ends both with RST; a used-up quota resets the sender and closes the
//! receiver gracefully (a reset would discard what its socket still has to send).

use super::Next;

/// How a half of the pair is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// FIN.
    Graceful,
    /// RST (SO_LINGER 0).
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairStep {
    /// Shut down the destination's write side; the other direction still runs.
    HalfClose,
    /// Shut down the destination's write side, then end the pair gracefully.
    HalfCloseAndEnd,
    /// End the pair now: close this direction's source with `this`, its destination
    /// with `peer`.
    End { this: Close, peer: Close },
}

/// The direction ended with `how` (`Finished`, `QuotaCut` or `Fail`); `peer_done` says
/// whether the other direction had already finished. `None` for a `how` that is no end.
pub(crate) fn direction_ended(how: Next, peer_done: bool) -> Option<PairStep> {
    Some(match how {
        Next::Finished if peer_done => PairStep::HalfCloseAndEnd,
        Next::Finished => PairStep::HalfClose,
        Next::QuotaCut => PairStep::End {
            this: Close::Abort,
            peer: Close::Graceful,
        },
        Next::Fail(_) => PairStep::End {
            this: Close::Abort,
            peer: Close::Abort,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_close_then_end_and_errors_abort_both() {
        assert_eq!(
            direction_ended(Next::Finished, false),
            Some(PairStep::HalfClose)
        );
        assert_eq!(
            direction_ended(Next::Finished, true),
            Some(PairStep::HalfCloseAndEnd)
        );
        let both = PairStep::End {
            this: Close::Abort,
            peer: Close::Abort,
        };
        assert_eq!(
            direction_ended(Next::Fail(libc::ECONNRESET), false),
            Some(both)
        );
        assert_eq!(direction_ended(Next::Fail(libc::EPIPE), true), Some(both));
        assert_eq!(
            direction_ended(Next::QuotaCut, false),
            Some(PairStep::End {
                this: Close::Abort,
                peer: Close::Graceful
            })
        );
        assert_eq!(direction_ended(Next::Readable, true), None);
    }
}
