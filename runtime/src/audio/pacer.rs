//! The downlink pacer: when may the next Opus frame go to the device?
//!
//! The firmware's decode queue holds at most 40 packets and silently drops the rest, so the
//! server sends a small pre-buffer and then one frame per frame duration, in real time. This is
//! a Sans-I/O state machine: time is an input, nothing sleeps here. The caller asks
//! [`Pacer::due`], sleeps until then, sends, and reports it with [`Pacer::sent`].
//!
//! The schedule is drift-free like the Python server's rate controller: every deadline is
//! computed from one anchor (`anchor + k × frame`), never from the previous send, so late
//! wake-ups and short pauses between sentences do not add up. The anchor is the moment the first
//! frame is sent after a [`reset`](Pacer::reset) or after the device's buffer ran dry; then the
//! first `prebuffer` frames are due at once and frame `n ≥ prebuffer` is due at
//! `anchor + (n − prebuffer + 1) × frame`.

use std::time::{Duration, Instant};

/// A drift-free real-time pacer for downlink audio frames.
#[derive(Debug, Clone)]
pub struct Pacer {
    frame: Duration,
    prebuffer: u32,
    /// When the first frame of the current run was sent; `None` before the first send.
    anchor: Option<Instant>,
    /// Frames sent since the anchor.
    sent: u64,
}

impl Pacer {
    /// Creates a pacer for frames of `frame` duration that sends `prebuffer` frames at once
    /// before pacing in real time.
    ///
    /// A `prebuffer` of 0 behaves like 1: the first frame of a run always goes at once (it is
    /// what sets the anchor), and frame `n` is then due at `anchor + n × frame`.
    pub fn new(frame: Duration, prebuffer: u32) -> Self {
        Self { frame, prebuffer: prebuffer.max(1), anchor: None, sent: 0 }
    }

    /// `anchor + frames × frame`, saturating (years of audio would be needed to overflow).
    fn at(&self, anchor: Instant, frames: u64) -> Instant {
        let frames = u32::try_from(frames).unwrap_or(u32::MAX);
        anchor.checked_add(self.frame.saturating_mul(frames)).unwrap_or(anchor)
    }

    /// The anchor of the current run, or `None` if the next send starts a new run (nothing sent
    /// since the last reset, or the device has played everything by `now`).
    fn live_anchor(&self, now: Instant) -> Option<Instant> {
        let anchor = self.anchor?;
        (now <= self.at(anchor, self.sent)).then_some(anchor)
    }

    /// When the next frame may be sent (`now` or earlier means: send it now).
    pub fn due(&mut self, now: Instant) -> Instant {
        let Some(anchor) = self.live_anchor(now) else {
            // A new run: the pre-buffer goes out at once.
            return now;
        };
        let n = self.sent;
        let prebuffer = u64::from(self.prebuffer);
        if n < prebuffer { anchor } else { self.at(anchor, n - prebuffer + 1) }
    }

    /// Records that one frame was sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        if self.live_anchor(now).is_none() {
            // First frame after a reset, or the device's buffer ran dry while we had nothing to
            // send (waiting for TTS): re-anchor, so the pre-buffer applies again.
            self.anchor = Some(now);
            self.sent = 0;
        }
        self.sent += 1;
    }

    /// When the device will have played everything sent so far (`None` before the first send).
    pub fn play_end(&self) -> Option<Instant> {
        self.anchor.map(|anchor| self.at(anchor, self.sent))
    }

    /// Forgets the current run (after an abort or at the end of a reply).
    pub fn reset(&mut self) {
        self.anchor = None;
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(60);

    /// Sends `frames` frames as fast as the pacer allows starting at `now`; returns the time the
    /// last one went out.
    fn stream(pacer: &mut Pacer, mut now: Instant, frames: usize) -> Instant {
        for _ in 0..frames {
            now = now.max(pacer.due(now));
            pacer.sent(now);
        }
        now
    }

    #[test]
    fn prebuffer_goes_at_once_then_real_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(FRAME, 5);
        assert_eq!(p.play_end(), None);
        for _ in 0..5 {
            assert_eq!(p.due(t0), t0);
            p.sent(t0);
        }
        assert_eq!(p.play_end(), Some(t0 + FRAME * 5));
        for k in 1..=20u32 {
            let due = p.due(t0 + FRAME * (k - 1));
            assert_eq!(due, t0 + FRAME * k, "frame {} due on the anchor's grid", 4 + k);
            p.sent(due);
        }
        assert_eq!(p.play_end(), Some(t0 + FRAME * 25));
    }

    #[test]
    fn never_more_than_prebuffer_plus_one_ahead() {
        let t0 = Instant::now();
        let prebuffer = 5u32;
        let mut p = Pacer::new(FRAME, prebuffer);
        let mut now = t0;
        let mut sent_since_anchor = 0u64;
        let mut anchor = t0;
        // Irregular wake-ups: sometimes late, sometimes early polls, with sentence gaps.
        for i in 0..2_000u64 {
            let due = p.due(now);
            if due <= now {
                if p.play_end().is_none_or(|end| now > end) {
                    anchor = now;
                    sent_since_anchor = 0;
                }
                p.sent(now);
                sent_since_anchor += 1;
                let played = (now - anchor).as_nanos() / FRAME.as_nanos();
                let ahead = sent_since_anchor as i128 - played as i128;
                assert!(ahead <= i128::from(prebuffer) + 1, "{ahead} frames ahead at step {i}");
                assert!(ahead <= 40);
            }
            // Advance by a pseudo-random 0..90 ms, with an occasional 1 s gap.
            let step = if i % 97 == 0 { 1_000 } else { (i * 37) % 90 };
            now += Duration::from_millis(step);
        }
    }

    #[test]
    fn short_gaps_do_not_drift() {
        let t0 = Instant::now();
        let mut p = Pacer::new(FRAME, 5);
        // Sentence 1: 30 frames.
        let end1 = stream(&mut p, t0, 30);
        assert_eq!(end1, t0 + FRAME * 25);
        // A 100 ms pause (TTS of the next sentence) while the device still has 4 frames queued.
        let resume = end1 + Duration::from_millis(100);
        assert!(resume < p.play_end().unwrap());
        let end2 = stream(&mut p, resume, 30);
        // Still on the original grid: frame 59 is due at anchor + 55 frames.
        assert_eq!(end2, t0 + FRAME * 55);
        assert_eq!(p.play_end(), Some(t0 + FRAME * 60));
    }

    #[test]
    fn a_long_gap_reanchors_with_a_new_prebuffer() {
        let t0 = Instant::now();
        let mut p = Pacer::new(FRAME, 5);
        stream(&mut p, t0, 10);
        let play_end = p.play_end().unwrap();
        let later = play_end + Duration::from_millis(500);
        // Due at once, and the pre-buffer goes out in a burst again.
        for _ in 0..5 {
            assert_eq!(p.due(later), later);
            p.sent(later);
        }
        assert_eq!(p.due(later), later + FRAME);
        assert_eq!(p.play_end(), Some(later + FRAME * 5));
    }

    #[test]
    fn reset_starts_over() {
        let t0 = Instant::now();
        let mut p = Pacer::new(FRAME, 3);
        stream(&mut p, t0, 10);
        p.reset();
        assert_eq!(p.play_end(), None);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(p.due(t1), t1);
        p.sent(t1);
        assert_eq!(p.play_end(), Some(t1 + FRAME));
    }

    #[test]
    fn zero_prebuffer_sends_the_first_frame_at_once() {
        let t0 = Instant::now();
        let mut p = Pacer::new(FRAME, 0);
        assert_eq!(p.due(t0), t0);
        p.sent(t0);
        assert_eq!(p.due(t0), t0 + FRAME);
    }
}
