//! The VAD's decision rules, as a pure function: where an utterance starts and ends, from each
//! window's speech probability (Silero's) and samples. No model, no clock: the tests below feed
//! plain sequences.
//!
//! - **Start** (the Python server's rule): a window is voiced when its probability is at least
//!   `threshold`; speech starts once 3 of the last 5 windows are voiced.
//! - **End**: the silence that ends an utterance (`min_silence_duration_ms`) is counted from the
//!   *last loud sample*, to the sample, while the model agrees it is over (the current window's
//!   probability is below `threshold_low`). Silero's probability lags the voice by 60–140 ms (its
//!   recurrent state fades slowly), so counting from the model's own silence alone ends every
//!   utterance that much later; the samples say exactly when the voice stopped. "Loud" adapts:
//!   three times the background's level (the peaks of windows the model hears no voice in), and
//!   within 30 dB of the utterance's own peak. The end can also
//!   fall in a window's first samples ([`EndPointer::ends_within`]): the session learns it when
//!   the frame that holds them arrives, not a window later.
//! - The model's own rule still applies, so a noisy room (never quiet by the samples) ends
//!   utterances too: `min_silence` of windows below `threshold_low` (hysteresis) in a row.

/// A transition of the speaking state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Speech started.
    Start,
    /// Speech ended.
    End,
}

/// Windows in the voting history (the Python server's rule: 3 of the last 5).
const VOTE_WINDOWS: u32 = 5;

/// Voiced windows among the last [`VOTE_WINDOWS`] needed to start speech.
const VOTES_TO_START: u32 = 3;

/// The quietest level that counts as loud, whatever the background (a 16-bit sample).
const MIN_LOUD: u16 = 300;

/// Loud is this many times the background's peak.
const ABOVE_BACKGROUND: f32 = 3.0;

/// Loud is at least the utterance's peak divided by this (30 dB).
const BELOW_PEAK: u16 = 32;

/// The decision state of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EndPointer {
    threshold: f32,
    threshold_low: f32,
    min_silence: u64,
    /// Voiced flags of the last windows, newest in bit 0.
    history: u8,
    speaking: bool,
    /// Samples of windows below `threshold_low` in a row, while speaking (the model's silence).
    model_silence: u64,
    /// Samples since the last loud sample, through the last window, while speaking.
    since_loud: u64,
    /// The loudest sample of this utterance.
    speech_peak: u16,
    /// The background's peak level (a slow average of window peaks while not speaking).
    background: f32,
    /// The probability of the last window.
    last_probability: f32,
}

impl EndPointer {
    /// Rules with these thresholds and `min_silence` samples of silence to end an utterance.
    pub fn new(threshold: f32, threshold_low: f32, min_silence: u64) -> Self {
        Self {
            threshold,
            threshold_low,
            min_silence,
            history: 0,
            speaking: false,
            model_silence: 0,
            since_loud: 0,
            speech_peak: 0,
            background: 0.0,
            last_probability: 0.0,
        }
    }

    /// Whether speech is going on.
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Takes one window (its samples and the model's probability for them); the transition it
    /// caused, if any.
    pub fn window(&mut self, samples: &[i16], probability: f32) -> Option<Transition> {
        self.last_probability = probability;
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        if !self.speaking {
            let voiced = probability >= self.threshold;
            let mask = (1u8 << VOTE_WINDOWS) - 1;
            self.history = ((self.history << 1) | u8::from(voiced)) & mask;
            if self.history.count_ones() < VOTES_TO_START {
                // The background is what the model hears no voice in (not the onset of speech).
                if probability < self.threshold_low {
                    self.background = 0.95 * self.background + 0.05 * f32::from(peak);
                }
                return None;
            }
            self.speaking = true;
            self.model_silence = 0;
            self.since_loud = 0;
            self.speech_peak = peak;
            return Some(Transition::Start);
        }
        self.speech_peak = self.speech_peak.max(peak);
        self.since_loud = self.quiet_after(samples, self.since_loud);
        if probability >= self.threshold_low {
            self.model_silence = 0;
        } else {
            self.model_silence += samples.len() as u64;
        }
        let quiet = probability < self.threshold_low && self.since_loud >= self.min_silence;
        if self.model_silence >= self.min_silence || quiet {
            return Some(self.end());
        }
        None
    }

    /// Whether the utterance is over within `partial`, the first samples of the next window (the
    /// rest of a frame that did not fill a window): they complete the silence after the last loud
    /// sample while the model already hears none. Call [`EndPointer::end`] then.
    pub fn ends_within(&self, partial: &[i16]) -> bool {
        self.speaking
            && self.last_probability < self.threshold_low
            && self.quiet_after(partial, self.since_loud) >= self.min_silence
    }

    /// Ends the utterance now.
    pub fn end(&mut self) -> Transition {
        self.speaking = false;
        self.model_silence = 0;
        // The windows that started this utterance must not vote for the next one.
        self.history = 0;
        Transition::End
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Self::new(self.threshold, self.threshold_low, self.min_silence);
    }

    /// The samples since the last loud one, after `samples` follow `since` quiet ones.
    fn quiet_after(&self, samples: &[i16], since: u64) -> u64 {
        let loud = self.loud_level();
        match samples.iter().rposition(|s| s.unsigned_abs() >= loud) {
            Some(last) => (samples.len() - 1 - last) as u64,
            None => since + samples.len() as u64,
        }
    }

    /// The level at and above which a sample is loud (the voice).
    fn loud_level(&self) -> u16 {
        let background = (self.background * ABOVE_BACKGROUND).min(f32::from(u16::MAX)) as u16;
        MIN_LOUD.max(background).max(self.speech_peak / BELOW_PEAK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 512-sample windows at 16 kHz, as Silero takes them.
    const W: usize = 512;
    /// 500 ms of silence ends an utterance.
    const MIN: u64 = 8000;

    fn loud() -> Vec<i16> {
        (0..W).map(|i| if i % 2 == 0 { 12_000 } else { -12_000 }).collect()
    }

    fn quiet() -> Vec<i16> {
        vec![0; W]
    }

    /// A window whose voice stops after `n` samples.
    fn fading(n: usize) -> Vec<i16> {
        let mut w = loud();
        w[n..].fill(0);
        w
    }

    /// Feeds (window, probability) pairs; returns each transition with its window index.
    fn feed(rules: &mut EndPointer, windows: &[(Vec<i16>, f32)]) -> Vec<(usize, Transition)> {
        windows.iter().enumerate().filter_map(|(i, (w, p))| rules.window(w, *p).map(|t| (i, t))).collect()
    }

    fn rules() -> EndPointer {
        EndPointer::new(0.5, 0.3, MIN)
    }

    #[test]
    fn speech_starts_on_three_of_five_voiced_windows() {
        let mut r = rules();
        let seq = [(quiet(), 0.1), (loud(), 0.9), (quiet(), 0.2), (loud(), 0.8), (loud(), 0.7)];
        assert_eq!(feed(&mut r, &seq), [(4, Transition::Start)]);
        let mut r = rules();
        let seq = [(loud(), 0.9), (quiet(), 0.1), (quiet(), 0.1), (loud(), 0.9), (quiet(), 0.1), (loud(), 0.9)];
        assert_eq!(feed(&mut r, &seq), [], "two of five, then two of five");
    }

    #[test]
    fn the_end_counts_from_the_last_loud_sample_not_from_the_model() {
        let mut r = rules();
        let mut seq = vec![(loud(), 0.9); 5];
        // The voice stops 100 samples into window 5; the model keeps hearing it for 3 windows.
        seq.push((fading(100), 0.95));
        seq.extend([(quiet(), 0.9), (quiet(), 0.6), (quiet(), 0.35)]);
        seq.extend(std::iter::repeat_n((quiet(), 0.02), 20));
        let events = feed(&mut r, &seq);
        assert_eq!(events[0], (2, Transition::Start));
        // 8000 samples after sample 99 of window 5: 412 + 15 × 512 = 8092 at window 20.
        assert_eq!(events[1], (20, Transition::End), "{events:?}");
        // The model's own count would have ended it at window 24 (16 windows below 0.3 from 9).
    }

    #[test]
    fn the_end_can_fall_inside_the_next_frame() {
        let mut r = rules();
        let mut seq = vec![(loud(), 0.9); 5];
        seq.push((fading(511), 0.9));
        seq.extend(std::iter::repeat_n((quiet(), 0.02), 15));
        assert_eq!(feed(&mut r, &seq).len(), 1, "15 quiet windows: 7681 samples, not yet");
        assert!(!r.ends_within(&[0; 100]), "7781");
        assert!(r.ends_within(&[0; 320]), "8001: the frame that holds these ends it");
        assert_eq!(r.end(), Transition::End);
        assert!(!r.speaking());
    }

    #[test]
    fn quiet_speech_the_model_still_hears_does_not_end() {
        let mut r = rules();
        let mut seq = vec![(loud(), 0.9); 5];
        // Below the loud level, but the model says speech: the utterance goes on.
        let soft: Vec<i16> = vec![100; W];
        seq.extend(std::iter::repeat_n((soft, 0.6), 30));
        assert_eq!(feed(&mut r, &seq), [(2, Transition::Start)]);
        assert!(r.speaking());
    }

    #[test]
    fn a_short_pause_does_not_end_the_utterance() {
        let mut r = rules();
        let mut seq = vec![(loud(), 0.9); 5];
        seq.extend(std::iter::repeat_n((quiet(), 0.05), 9)); // 288 ms
        seq.extend(vec![(loud(), 0.9); 3]);
        seq.extend(std::iter::repeat_n((quiet(), 0.05), 20));
        let events = feed(&mut r, &seq);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1].0, 7 + 9 + 16);
    }

    #[test]
    fn in_a_noisy_room_the_model_ends_the_utterance() {
        let mut r = rules();
        // Loud background all along: never quiet by the samples.
        let mut seq = vec![(loud(), 0.9); 5];
        seq.extend(std::iter::repeat_n((loud(), 0.1), 20));
        let events = feed(&mut r, &seq);
        assert_eq!(events, [(2, Transition::Start), (4 + 16, Transition::End)]);
    }

    #[test]
    fn loud_adapts_to_the_background_and_the_voice() {
        let mut r = rules();
        // A background at 2000: loud is 6000 and above.
        let hum: Vec<i16> = (0..W).map(|i| if i % 2 == 0 { 2000 } else { -2000 }).collect();
        for _ in 0..200 {
            assert_eq!(r.window(&hum, 0.05), None);
        }
        assert!(r.loud_level() >= 5900, "{}", r.loud_level());
        // A soft voice over it at 9000 is loud; the hum alone is not.
        let voice: Vec<i16> = (0..W).map(|i| if i % 2 == 0 { 9000 } else { -9000 }).collect();
        let mut seq = vec![(voice.clone(), 0.9); 5];
        seq.extend(std::iter::repeat_n((hum.clone(), 0.05), 16));
        let events = feed(&mut r, &seq);
        assert_eq!(events, [(2, Transition::Start), (20, Transition::End)]);
        r.reset();
        assert!(!r.speaking());
    }
}
