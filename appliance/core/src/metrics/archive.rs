//! The round-robin archives, byte by byte (docs/formats.md, "Metric
//! archives"). Pure: where a slot's row lives, and how a row is encoded.
//!
//! Each object (a host, a VM) has four archives — 1 minute for a day,
//! 30 minutes for a month, 6 hours for a year, 1 week for ten years —
//! each a ring of fixed-size blocks, so an object's disk use is fixed
//! whatever the time. A block's header says which generation (absolute
//! block number) it holds up to which row; the rows after that still hold
//! the generation one ring before, so the whole ring is history.

use super::catalog::Kind;

/// Bytes of one stored block: one block and its key fill one 4 KiB redb
/// page.
pub const BLOCK_BYTES: usize = 4000;
const HEADER_BYTES: usize = 8;
/// Bytes per archived metric in a row: the average, then the maximum.
const CELL_BYTES: usize = 3;

/// A level that was not measured.
const NONE: u16 = 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archive {
    pub name: &'static str,
    /// Seconds per row.
    pub step: u64,
    /// Rows the archive must hold at least.
    pub min_rows: u64,
}

pub const ARCHIVES: [Archive; 4] = [
    Archive {
        name: "minute",
        step: 60,
        min_rows: 1440,
    },
    Archive {
        name: "half-hour",
        step: 1800,
        min_rows: 1488,
    },
    Archive {
        name: "six-hours",
        step: 21_600,
        min_rows: 1464,
    },
    Archive {
        name: "week",
        step: 604_800,
        min_rows: 522,
    },
];

/// The span a graph or query covers, and the archive it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeframe {
    Hour,
    Day,
    Week,
    Month,
    Year,
    Decade,
}

impl Timeframe {
    pub const ALL: [Timeframe; 6] = [
        Timeframe::Hour,
        Timeframe::Day,
        Timeframe::Week,
        Timeframe::Month,
        Timeframe::Year,
        Timeframe::Decade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeframe::Hour => "hour",
            Timeframe::Day => "day",
            Timeframe::Week => "week",
            Timeframe::Month => "month",
            Timeframe::Year => "year",
            Timeframe::Decade => "decade",
        }
    }

    pub fn parse(s: &str) -> Option<Timeframe> {
        Timeframe::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// (archive index, rows shown).
    pub fn span(self) -> (usize, u64) {
        match self {
            Timeframe::Hour => (0, 60),
            Timeframe::Day => (0, 1440),
            Timeframe::Week => (1, 336),
            Timeframe::Month => (1, 1488),
            Timeframe::Year => (2, 1464),
            Timeframe::Decade => (3, 522),
        }
    }
}

/// Consolidation function: which of a row's two figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Avg,
    Max,
}

impl Cf {
    pub fn parse(s: &str) -> Option<Cf> {
        match s {
            "avg" | "average" => Some(Cf::Avg),
            "max" | "maximum" => Some(Cf::Max),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cf::Avg => "avg",
            Cf::Max => "max",
        }
    }
}

/// How one kind's rows fit the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub row_bytes: usize,
    pub rows_per_block: u64,
    /// Blocks in each archive's ring.
    pub blocks: [u64; 4],
}

impl Layout {
    pub fn of(kind: Kind) -> Layout {
        let row_bytes = kind.archived() * CELL_BYTES;
        let rows_per_block = ((BLOCK_BYTES - HEADER_BYTES) / row_bytes) as u64;
        let blocks = ARCHIVES.map(|a| a.min_rows.div_ceil(rows_per_block));
        Layout {
            row_bytes,
            rows_per_block,
            blocks,
        }
    }

    /// Rows each archive's ring holds (at least its `min_rows`).
    pub fn rows(&self, archive: usize) -> u64 {
        self.blocks[archive] * self.rows_per_block
    }

    /// Where the row of absolute slot `slot` (UNIX time / step) lives.
    pub fn place(&self, archive: usize, slot: u64) -> Place {
        let generation = slot / self.rows_per_block;
        Place {
            block: generation % self.blocks[archive],
            generation,
            offset: HEADER_BYTES + (slot % self.rows_per_block) as usize * self.row_bytes,
        }
    }

    /// Bytes one object of this kind takes at most.
    pub fn object_bytes(&self) -> u64 {
        self.blocks.iter().sum::<u64>() * BLOCK_BYTES as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Index of the block in the archive's ring.
    pub block: u64,
    /// Absolute block number, the block's header.
    pub generation: u64,
    /// Byte offset of the row in the block.
    pub offset: usize,
}

/// A block's header: the generation it is being written in (48 bits) and
/// the highest row written in it (16 bits); rows above that one are still
/// of the generation one ring earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    generation: u64,
    high: u64,
}

const GENERATION_BITS: u32 = 48;

impl Header {
    fn parse(block: &[u8]) -> Option<Header> {
        let raw = u64::from_le_bytes(block.get(..HEADER_BYTES)?.try_into().ok()?);
        Some(Header {
            generation: raw & ((1 << GENERATION_BITS) - 1),
            high: raw >> GENERATION_BITS,
        })
    }

    fn bytes(self) -> [u8; HEADER_BYTES] {
        (self.generation | (self.high << GENERATION_BITS)).to_le_bytes()
    }
}

/// The store key of one block.
pub fn block_key(kind: Kind, id: &str, archive: usize, block: u64) -> String {
    format!("{}/{id}/{archive}/{block}", kind.as_str())
}

impl Layout {
    fn row_index(&self, place: &Place) -> u64 {
        ((place.offset - HEADER_BYTES) / self.row_bytes) as u64
    }

    /// The row at `place` in `block` (its stored bytes, if any): `None` if
    /// the block is absent or malformed, or the row was overwritten or never
    /// written.
    pub fn row_at<'a>(
        &self,
        archive: usize,
        block: Option<&'a [u8]>,
        place: &Place,
    ) -> Option<&'a [u8]> {
        let b = block.filter(|b| b.len() == BLOCK_BYTES)?;
        let h = Header::parse(b)?;
        let index = self.row_index(place);
        let current = place.generation == h.generation && index <= h.high;
        let previous = place.generation + self.blocks[archive] == h.generation && index > h.high;
        if !(current || previous) {
            return None;
        }
        // All 0xFF: a gap (a measured row has a zero ratio byte at least).
        b.get(place.offset..place.offset + self.row_bytes)
            .filter(|r| r.iter().any(|x| *x != 0xFF))
    }

    /// `block` with `row` written at `place`; `None` if the block already
    /// holds a later generation (the row is older than the ring).
    pub fn write_row(
        &self,
        archive: usize,
        block: Option<&[u8]>,
        place: &Place,
        row: &[u8],
    ) -> Option<Vec<u8>> {
        debug_assert_eq!(row.len(), self.row_bytes);
        let index = self.row_index(place);
        let row_range = |i: u64| {
            let start = HEADER_BYTES + i as usize * self.row_bytes;
            start..start + self.row_bytes
        };
        let old = block
            .filter(|b| b.len() == BLOCK_BYTES)
            .and_then(|b| Some((b.to_vec(), Header::parse(b)?)));
        let (mut bytes, header) = match old {
            Some((_, h)) if h.generation > place.generation => return None,
            Some((mut bytes, h)) if h.generation == place.generation => {
                // Rows skipped since the last one written are gaps, not the
                // previous ring's.
                for i in (h.high + 1)..index {
                    bytes[row_range(i)].fill(0xFF);
                }
                (
                    bytes,
                    Header {
                        generation: h.generation,
                        high: h.high.max(index),
                    },
                )
            }
            Some((mut bytes, h)) => {
                let follows = h.generation + self.blocks[archive] == place.generation;
                // The rows after this one keep the last ring's figures only
                // if that ring is the one just before.
                let clear_from = if follows {
                    self.rows_per_block
                } else {
                    index + 1
                };
                for i in (0..index).chain(clear_from..self.rows_per_block) {
                    bytes[row_range(i)].fill(0xFF);
                }
                (
                    bytes,
                    Header {
                        generation: place.generation,
                        high: index,
                    },
                )
            }
            None => (
                vec![0xFF; BLOCK_BYTES],
                Header {
                    generation: place.generation,
                    high: index,
                },
            ),
        };
        bytes[..HEADER_BYTES].copy_from_slice(&header.bytes());
        bytes[row_range(index)].copy_from_slice(row);
        Some(bytes)
    }
}

/// A row's figures for each archived metric: (average, maximum) in
/// natural units, `None` where nothing was measured.
pub type Row = Vec<Option<(f64, f64)>>;

pub fn encode_row(kind: Kind, row: &Row) -> Vec<u8> {
    let metrics = &kind.metrics()[..kind.archived()];
    let mut out = Vec::with_capacity(metrics.len() * CELL_BYTES);
    for (i, metric) in metrics.iter().enumerate() {
        let scale = metric.unit.storage_scale();
        let (level, ratio) = match row.get(i).copied().flatten() {
            Some((avg, max)) => encode_cell(avg * scale, max * scale),
            None => (NONE, 0),
        };
        out.extend_from_slice(&level.to_le_bytes());
        out.push(ratio);
    }
    out
}

pub fn decode_row(kind: Kind, bytes: &[u8]) -> Row {
    kind.metrics()[..kind.archived()]
        .iter()
        .enumerate()
        .map(|(i, metric)| {
            let cell = bytes.get(i * CELL_BYTES..(i + 1) * CELL_BYTES)?;
            let level = u16::from_le_bytes([cell[0], cell[1]]);
            let (avg, max) = decode_cell(level, cell[2])?;
            let scale = metric.unit.storage_scale();
            let (avg, max) = (avg / scale, max / scale);
            // The maximum's ratio step can overshoot a share's ceiling.
            let max = match metric.unit {
                super::catalog::Unit::Percent => max.min(100.0).max(avg),
                _ => max,
            };
            Some((avg, max))
        })
        .collect()
}

/// A non-negative value as a 16-bit float: 5 bits of exponent, 11 of
/// mantissa. Below 2048 exact; above, 12 significant bits (error under
/// 1/4096); the largest is about 4.4e12. 0xFFFF is "not measured".
fn encode_level(x: f64) -> u16 {
    let v = x.max(0.0).round();
    if v < 2048.0 {
        return v as u16;
    }
    let v = v.min(4.39e12) as u64;
    let shift = 64 - v.leading_zeros() - 12;
    let mut mantissa = ((v as f64) / (1u64 << shift) as f64).round() as u64;
    let mut exponent = shift + 1;
    if mantissa >= 4096 {
        mantissa /= 2;
        exponent += 1;
    }
    let code = ((exponent as u16) << 11) | (mantissa as u16 - 2048);
    code.min(NONE - 1)
}

fn decode_level(code: u16) -> f64 {
    let exponent = u32::from(code >> 11);
    let mantissa = u64::from(code & 0x7FF);
    if exponent == 0 {
        return mantissa as f64;
    }
    ((2048 + mantissa) << (exponent - 1)) as f64
}

/// Steps of the maximum's ratio to the average: 2^(1/12), about 6 %.
const RATIO_STEPS_PER_DOUBLING: f64 = 12.0;

fn encode_cell(avg: f64, max: f64) -> (u16, u8) {
    let level = encode_level(avg);
    let stored_avg = decode_level(level);
    let ratio = if stored_avg == 0.0 {
        // Nothing on average: the maximum, if tiny, is stored as it is.
        max.round().clamp(0.0, 255.0)
    } else {
        (RATIO_STEPS_PER_DOUBLING * (max.max(stored_avg) / stored_avg).log2())
            .round()
            .clamp(0.0, 255.0)
    };
    (level, ratio as u8)
}

fn decode_cell(level: u16, ratio: u8) -> Option<(f64, f64)> {
    if level == NONE {
        return None;
    }
    let avg = decode_level(level);
    let max = if avg == 0.0 {
        f64::from(ratio)
    } else {
        avg * (f64::from(ratio) / RATIO_STEPS_PER_DOUBLING).exp2()
    };
    Some((avg, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_twelve_significant_bits() {
        for x in [
            0.0,
            1.0,
            2047.0,
            2048.0,
            4095.0,
            4097.0,
            1e6,
            123_456_789.0,
            4e12,
        ] {
            let back = decode_level(encode_level(x));
            assert!((back - x).abs() <= x / 4096.0 + 0.5, "{x} -> {back}");
        }
        assert_eq!(encode_level(-5.0), 0);
        assert_ne!(encode_level(1e300), NONE, "clamped, never 'not measured'");
        assert!(decode_level(encode_level(1e300)) >= 4.38e12);
    }

    #[test]
    fn cells_keep_the_average_close_and_the_maximum_within_a_step() {
        for (avg, max) in [
            (50.0, 90.0),
            (1000.0, 1000.0),
            (3e8, 9e9),
            (0.0, 7.0),
            (2.0, 2e6),
        ] {
            let (level, ratio) = encode_cell(avg, max);
            let (a, m) = decode_cell(level, ratio).unwrap();
            assert!((a - avg).abs() <= avg / 4096.0 + 0.5, "{avg} -> {a}");
            assert!((m - max).abs() <= max * 0.03 + 0.5, "{max} -> {m}");
            assert!(m >= a);
        }
        assert_eq!(decode_cell(NONE, 0), None);
    }

    #[test]
    fn rows_round_trip_in_natural_units() {
        let row: Row = vec![
            Some((12.34, 56.78)),
            None,
            Some((512.0 * 1024.0 * 1024.0, 600.0 * 1024.0 * 1024.0)),
            Some((0.0, 0.0)),
            Some((250.5, 400.0)),
            Some((0.1, 3.0)),
            Some((1e6, 5e6)),
            Some((2e6, 2e6)),
        ];
        let bytes = encode_row(Kind::Vm, &row);
        assert_eq!(bytes.len(), Layout::of(Kind::Vm).row_bytes);
        let back = decode_row(Kind::Vm, &bytes);
        for (i, (want, got)) in row.iter().zip(&back).enumerate() {
            match (want, got) {
                (None, None) => {}
                (Some((a, m)), Some((ga, gm))) => {
                    assert!((a - ga).abs() <= a * 0.001 + 0.01, "{i}: {a} vs {ga}");
                    assert!((m - gm).abs() <= m * 0.03 + 0.1, "{i}: {m} vs {gm}");
                }
                _ => panic!("{i}: {want:?} vs {got:?}"),
            }
        }
    }

    #[test]
    fn layouts_hold_what_the_archives_promise_within_the_budget() {
        for kind in [Kind::Host, Kind::Vm] {
            let l = Layout::of(kind);
            for (i, a) in ARCHIVES.iter().enumerate() {
                assert!(l.rows(i) >= a.min_rows, "{kind:?} {}", a.name);
            }
            assert!(HEADER_BYTES + l.rows_per_block as usize * l.row_bytes <= BLOCK_BYTES);
        }
        // 25,000 VMs and 2,000 hosts, before the store's own overhead.
        let total = 25_000 * Layout::of(Kind::Vm).object_bytes()
            + 2_000 * Layout::of(Kind::Host).object_bytes();
        assert!(total < 3_700_000_000, "{total}");
    }

    #[test]
    fn a_ring_holds_a_whole_ring_of_history_and_never_a_stale_row() {
        let l = Layout::of(Kind::Vm);
        let rows = l.rows(0);
        let slot0 = 29_000_000 - 29_000_000 % rows; // a minute in 2025, ring-aligned
        let p = l.place(0, slot0 + 5);
        let next_cycle = l.place(0, slot0 + 5 + rows);
        assert_eq!((p.block, p.offset), (next_cycle.block, next_cycle.offset));
        assert_ne!(p.generation, next_cycle.generation);

        let row = |b: u8| vec![b; l.row_bytes];
        // Rows 5 and 7 of a block; 6 is a gap.
        let block = l.write_row(0, None, &p, &row(1)).unwrap();
        let p7 = l.place(0, slot0 + 7);
        let block = l.write_row(0, Some(&block), &p7, &row(2)).unwrap();
        assert_eq!(l.row_at(0, Some(&block), &p), Some(&row(1)[..]));
        assert_eq!(l.row_at(0, Some(&block), &l.place(0, slot0 + 6)), None);
        assert_eq!(l.row_at(0, Some(&block), &p7), Some(&row(2)[..]));
        assert_eq!(
            l.row_at(0, Some(&block), &l.place(0, slot0 + 8)),
            None,
            "never written"
        );

        // A ring later row 5 is written again: 7 still shows the last ring.
        let block = l.write_row(0, Some(&block), &next_cycle, &row(3)).unwrap();
        assert_eq!(l.row_at(0, Some(&block), &next_cycle), Some(&row(3)[..]));
        assert_eq!(l.row_at(0, Some(&block), &p), None, "overwritten");
        assert_eq!(
            l.row_at(0, Some(&block), &p7),
            Some(&row(2)[..]),
            "last ring kept"
        );
        assert_eq!(
            l.row_at(0, Some(&block), &l.place(0, slot0 + 7 + rows)),
            None
        );
        // A row older than what the block holds is not written.
        assert_eq!(l.write_row(0, Some(&block), &p7, &row(9)), None);

        // Two rings later nothing of the old figures may show.
        let far = l.place(0, slot0 + 6 + 3 * rows);
        let block = l.write_row(0, Some(&block), &far, &row(4)).unwrap();
        let previous_ring = l.place(0, slot0 + 7 + 2 * rows);
        let stale = l.row_at(0, Some(&block), &previous_ring);
        assert!(
            stale.is_none_or(|r| r.iter().all(|b| *b == 0xFF)),
            "{stale:?}"
        );
        assert_eq!(l.row_at(0, Some(&block[..100]), &far), None, "short");
        assert_eq!(l.row_at(0, None, &far), None);
    }
}
