//! A consumer's progress: the chunks it handed to the sinks, in read order, and the end of the
//! longest prefix of them that committed, which is as far as its checkpoint may go.
//!
//! A chunk is the rows of one run of records, spread over the sinks; it is done when every
//! sink it touched acked it. Chunks can be acked out of order (sinks commit independently);
//! the committed position only moves over a done prefix, so nothing uncommitted is ever
//! checkpointed.

use proto::Position;
use std::collections::VecDeque;

struct Chunk {
    id: u64,
    last: Position,
    /// Sinks that have not acked it yet.
    pending: usize,
    /// Rows it handed to each sink.
    rows: Vec<usize>,
}

pub struct ChunkProgress {
    chunks: VecDeque<Chunk>,
    next_id: u64,
    /// Rows handed to each sink and not acked yet.
    in_flight_by_sink: Vec<usize>,
    /// End of the longest committed prefix.
    committed: Option<Position>,
}

impl ChunkProgress {
    pub fn new(sinks: usize) -> Self {
        Self { chunks: VecDeque::new(), next_id: 0, in_flight_by_sink: vec![0; sinks], committed: None }
    }

    /// The id the next chunk will have (its acks carry it).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Records a chunk that ends at `last` and handed `rows[i]` rows to sink `i`. A chunk with
    /// no rows is done at once.
    pub fn push(&mut self, last: Position, rows: Vec<usize>) {
        let pending = rows.iter().filter(|n| **n > 0).count();
        for (total, n) in self.in_flight_by_sink.iter_mut().zip(&rows) {
            *total += n;
        }
        self.chunks.push_back(Chunk { id: self.next_id, last, pending, rows });
        self.next_id += 1;
        self.advance();
    }

    /// One sink committed its part of chunk `id`.
    pub fn acked(&mut self, id: u64) {
        if let Some(chunk) = self.chunks.iter_mut().find(|c| c.id == id) {
            chunk.pending -= 1;
        }
        self.advance();
    }

    /// Pops the done prefix; moves `committed` to its end.
    fn advance(&mut self) {
        while self.chunks.front().is_some_and(|c| c.pending == 0) {
            let chunk = self.chunks.pop_front().expect("front exists");
            for (total, n) in self.in_flight_by_sink.iter_mut().zip(&chunk.rows) {
                *total -= n;
            }
            self.committed = Some(chunk.last);
        }
    }

    /// The end of the longest committed prefix of chunks.
    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }

    /// Whether every chunk handed on has committed.
    pub fn all_committed(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn in_flight_rows(&self) -> usize {
        self.in_flight_by_sink.iter().sum()
    }

    /// Rows not acked yet, by sink.
    pub fn in_flight_by_sink(&self) -> &[usize] {
        &self.in_flight_by_sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SequenceNumber;

    fn at(n: u128) -> Position {
        Position::new(SequenceNumber::from_u128(n), 0)
    }

    /// Acks out of order move the committed position only over a done prefix.
    #[test]
    fn the_committed_position_moves_over_the_done_prefix_only() {
        let mut p = ChunkProgress::new(2);
        p.push(at(1), vec![3, 1]);
        p.push(at(2), vec![0, 2]);
        p.push(at(3), vec![0, 0]);
        assert_eq!((p.committed(), p.in_flight_rows(), p.in_flight_by_sink()), (None, 6, &[3, 3][..]));
        p.acked(1);
        assert_eq!(p.committed(), None, "chunk 0 still waits");
        p.acked(0);
        assert_eq!(p.committed(), None, "chunk 0 waits for its second sink");
        p.acked(0);
        assert_eq!(p.committed(), Some(&at(3)), "0 and 1 done, 2 had no rows");
        assert!(p.all_committed());
        assert_eq!(p.in_flight_rows(), 0);
        p.push(at(4), vec![0, 0]);
        assert_eq!((p.committed(), p.next_id()), (Some(&at(4)), 4));
    }
}
