//! The pre-roll ring: the last few hundred milliseconds of uplink audio heard before speech
//! starts, handed to ASR with the utterance so its first syllable is not cut.

/// A fixed-capacity ring of i16 samples; pushing past capacity overwrites the oldest samples.
///
/// The buffer is allocated once in [`new`](Self::new); nothing allocates afterwards.
#[derive(Debug, Clone)]
pub struct PreRoll {
    buf: Box<[i16]>,
    /// Index of the oldest sample.
    start: usize,
    /// Samples held.
    len: usize,
}

impl PreRoll {
    /// Creates an empty ring holding at most `capacity` samples (0 = keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Self { buf: vec![0; capacity].into_boxed_slice(), start: 0, len: 0 }
    }

    /// The most samples the ring holds.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Samples currently held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the ring holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `samples`, overwriting the oldest ones when the ring is full.
    pub fn push(&mut self, samples: &[i16]) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        // Only the last `cap` samples can survive.
        let samples = &samples[samples.len().saturating_sub(cap)..];
        let n = samples.len();
        // Write position: one past the newest sample.
        let write = (self.start + self.len) % cap;
        let first = n.min(cap - write);
        let (head, tail) = samples.split_at(first);
        self.buf[write..write + first].copy_from_slice(head);
        self.buf[..tail.len()].copy_from_slice(tail);
        let total = self.len + n;
        if total > cap {
            // The oldest `total - cap` samples were overwritten.
            self.start = (self.start + (total - cap)) % cap;
            self.len = cap;
        } else {
            self.len = total;
        }
    }

    /// Appends the held samples to `out`, oldest first, and empties the ring.
    pub fn drain_into(&mut self, out: &mut Vec<i16>) {
        let cap = self.buf.len();
        if self.len > 0 {
            let first = self.len.min(cap - self.start);
            out.extend_from_slice(&self.buf[self.start..self.start + first]);
            out.extend_from_slice(&self.buf[..self.len - first]);
        }
        self.clear();
    }

    /// Forgets every held sample.
    pub fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(ring: &mut PreRoll) -> Vec<i16> {
        let mut out = Vec::new();
        ring.drain_into(&mut out);
        out
    }

    #[test]
    fn keeps_everything_below_capacity() {
        let mut ring = PreRoll::new(10);
        assert!(ring.is_empty());
        ring.push(&[1, 2, 3]);
        ring.push(&[4]);
        assert_eq!(ring.len(), 4);
        assert_eq!(drained(&mut ring), vec![1, 2, 3, 4]);
        assert!(ring.is_empty());
    }

    #[test]
    fn overwrites_the_oldest_in_order() {
        let mut ring = PreRoll::new(5);
        for chunk in [[1, 2, 3], [4, 5, 6], [7, 8, 9]] {
            ring.push(&chunk);
        }
        assert_eq!(ring.len(), 5);
        let mut out = vec![0];
        ring.drain_into(&mut out);
        assert_eq!(out, vec![0, 5, 6, 7, 8, 9], "appends, oldest first");
    }

    #[test]
    fn push_larger_than_capacity_keeps_the_tail() {
        let mut ring = PreRoll::new(4);
        ring.push(&[1, 2]);
        ring.push(&[10, 11, 12, 13, 14, 15]);
        assert_eq!(drained(&mut ring), vec![12, 13, 14, 15]);
    }

    #[test]
    fn matches_a_reference_model_across_wraps() {
        let mut ring = PreRoll::new(7);
        let mut model: Vec<i16> = Vec::new();
        let mut next = 0i16;
        for round in 0..200usize {
            let n = (round * 5 + 3) % 11;
            let chunk: Vec<i16> = (0..n)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            ring.push(&chunk);
            model.extend_from_slice(&chunk);
            let keep = model.len().saturating_sub(7);
            model.drain(..keep);
            assert_eq!(ring.len(), model.len());
            if round % 13 == 0 {
                assert_eq!(drained(&mut ring), model);
                model.clear();
            }
        }
    }

    #[test]
    fn clear_and_zero_capacity() {
        let mut ring = PreRoll::new(3);
        ring.push(&[1, 2, 3, 4]);
        ring.clear();
        assert!(ring.is_empty());
        assert_eq!(drained(&mut ring), Vec::<i16>::new());
        let mut none = PreRoll::new(0);
        none.push(&[1, 2, 3]);
        assert!(none.is_empty());
        assert_eq!(drained(&mut none), Vec::<i16>::new());
    }
}
