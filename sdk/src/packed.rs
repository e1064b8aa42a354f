//! The buffers of 0.1.2's `packed-validation` (layout in `wit/0.1.2/packed-validation.wit`):
//! a batch read in place, and verdicts written.
//!
//! Every validator reads batches through this layout. Batches that arrive typed, through
//! 0.1.0's `validation.validate` from a host older than 0.1.2, are packed into it first.

use std::cell::Cell;

use crate::bindings::types::{ColumnValues, RecordBatch, StringColumn};
use crate::validator::NewValue;

/// Column kinds, as the layout numbers them (the engine's record encoding uses the same).
pub(crate) const STRING: u8 = 1;
pub(crate) const INT64: u8 = 2;
pub(crate) const FLOAT64: u8 = 3;
pub(crate) const BOOL: u8 = 4;
pub(crate) const TIMESTAMP: u8 = 5;
pub(crate) const STRING_LIST: u8 = 6;
/// A rewrite's null value.
pub(crate) const NULL: u8 = 0;

const HEADER: usize = 8;
const DIRECTORY_ENTRY: usize = 12;

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// `count` u32 offsets, little-endian and unaligned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets<'a>(&'a [u8]);

impl Offsets<'_> {
    /// The `i`th offset; 0 past the end (a broken buffer reads as empty values).
    pub(crate) fn get(&self, i: usize) -> usize {
        u32_at(self.0, 4 * i).unwrap_or(0) as usize
    }
}

/// A string column: offsets into `data`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strings<'a> {
    pub(crate) offsets: Offsets<'a>,
    pub(crate) data: &'a [u8],
}

impl<'a> Strings<'a> {
    /// Splits `section` into `values + 1` offsets and the bytes after them.
    fn parse(section: &'a [u8], values: usize) -> Result<Self, String> {
        // Counts come from the buffer: on a 32-bit guest a hostile one could overflow.
        let offsets_len = values
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| format!("a string column of {values} values is too long"))?;
        if section.len() < offsets_len {
            return Err(format!(
                "a string column of {values} values needs {offsets_len} bytes of offsets, has {}",
                section.len()
            ));
        }
        let (offsets, data) = section.split_at(offsets_len);
        Ok(Strings {
            offsets: Offsets(offsets),
            data,
        })
    }

    /// Value `i`'s bytes; empty where the offsets point outside the data. Its two offsets
    /// are read as one eight-byte slice: one bounds check where two would do.
    pub(crate) fn bytes(&self, i: usize) -> &'a [u8] {
        let Some(pair) = self.offsets.0.get(4 * i..4 * i + 8) else {
            return &[];
        };
        let start = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize;
        let end = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]) as usize;
        self.data.get(start..end).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Values<'a> {
    Strings(Strings<'a>),
    /// Eight bytes a row: int64, float64 or timestamp, as the column's kind says.
    Words(&'a [u8]),
    Bools(&'a [u8]),
    Lists {
        lists: Offsets<'a>,
        items: Strings<'a>,
    },
}

/// One column of a packed batch, its sections found.
#[derive(Debug, Clone)]
pub(crate) struct Column<'a> {
    pub(crate) kind: u8,
    present: Option<&'a [u8]>,
    pub(crate) values: Values<'a>,
    /// Whether its string bytes are all ASCII: 0 not yet known, 1 no, 2 yes.
    ascii: Cell<u8>,
}

impl<'a> Column<'a> {
    fn empty() -> Self {
        Column {
            kind: 0,
            present: None,
            values: Values::Bools(&[]),
            ascii: Cell::new(0),
        }
    }

    pub(crate) fn present(&self, row: usize) -> bool {
        self.present.is_none_or(|p| p.get(row) == Some(&1))
    }

    /// The eight bytes of row `row` of an int64, float64 or timestamp column.
    pub(crate) fn word(&self, row: usize) -> [u8; 8] {
        match self.values {
            Values::Words(w) => w
                .get(8 * row..8 * row + 8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
            _ => [0; 8],
        }
    }

    /// The string bytes of the column (a list column's items').
    pub(crate) fn string_data(&self) -> &'a [u8] {
        match self.values {
            Values::Strings(s) | Values::Lists { items: s, .. } => s.data,
            _ => &[],
        }
    }

    /// Whether `check` says its string bytes are all ASCII, asked once per column.
    pub(crate) fn ascii(&self, check: impl FnOnce(&[u8]) -> bool) -> bool {
        match self.ascii.get() {
            0 => {
                let ascii = check(self.string_data());
                self.ascii.set(if ascii { 2 } else { 1 });
                ascii
            }
            known => known == 2,
        }
    }
}

/// Columns a batch keeps without allocating; wider schemas spill the rest to the heap.
const INLINE_COLUMNS: usize = 8;

/// A batch in the packed layout, read in place. Parsing it allocates nothing for schemas of
/// up to 8 fields: a call's fixed cost is counted in tens of nanoseconds, and an allocation
/// in a component is one of them.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    pub(crate) rows: usize,
    count: usize,
    inline: [Column<'a>; INLINE_COLUMNS],
    spilled: Vec<Column<'a>>,
}

impl<'a> Batch<'a> {
    #[cfg(test)]
    pub(crate) fn column_count(&self) -> usize {
        self.count
    }

    pub(crate) fn column(&self, i: usize) -> Option<&Column<'a>> {
        if i >= self.count {
            None
        } else if i < INLINE_COLUMNS {
            Some(&self.inline[i])
        } else {
            self.spilled.get(i - INLINE_COLUMNS)
        }
    }

    /// Finds the columns' sections and checks that each is as long as its rows need.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let (Some(rows), Some(count)) = (u32_at(bytes, 0), u32_at(bytes, 4)) else {
            return Err(format!(
                "a packed batch of {} bytes has no header",
                bytes.len()
            ));
        };
        let (rows, count) = (rows as usize, count as usize);
        if count > (bytes.len() - HEADER) / DIRECTORY_ENTRY {
            return Err(format!(
                "{count} columns do not fit a directory of {} bytes",
                bytes.len()
            ));
        }
        let mut batch = Batch {
            rows,
            count,
            inline: std::array::from_fn(|_| Column::empty()),
            spilled: Vec::new(),
        };
        for c in 0..count {
            let column = Self::parse_column(bytes, rows, c)?;
            if c < INLINE_COLUMNS {
                batch.inline[c] = column;
            } else {
                batch.spilled.push(column);
            }
        }
        Ok(batch)
    }

    fn parse_column(bytes: &'a [u8], rows: usize, c: usize) -> Result<Column<'a>, String> {
        let at = HEADER + DIRECTORY_ENTRY * c;
        let entry = bytes
            .get(at..at + DIRECTORY_ENTRY)
            .ok_or_else(|| format!("column {c}: the directory is cut short"))?;
        let (kind, flagged) = (entry[0], entry[1] == 1);
        let start = u32_at(entry, 4).unwrap_or(0) as usize;
        let len = u32_at(entry, 8).unwrap_or(0) as usize;
        let mut section = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| format!("column {c}: its section lies outside the buffer"))?;
        let short = |what: &str| format!("column {c}: too short for {rows} rows of {what}");
        let present = if flagged {
            let (p, rest) = section
                .split_at_checked(rows)
                .ok_or_else(|| short("presence"))?;
            section = rest;
            Some(p)
        } else {
            None
        };
        let values = match kind {
            STRING => Values::Strings(Strings::parse(section, rows)?),
            INT64 | FLOAT64 | TIMESTAMP => {
                if rows.checked_mul(8).is_none_or(|need| section.len() < need) {
                    return Err(short("8-byte values"));
                }
                Values::Words(section)
            }
            BOOL => {
                if section.len() < rows {
                    return Err(short("booleans"));
                }
                Values::Bools(section)
            }
            STRING_LIST => {
                let lists_len = rows
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(4))
                    .ok_or_else(|| short("list offsets"))?;
                let (lists, items) = section
                    .split_at_checked(lists_len)
                    .ok_or_else(|| short("list offsets"))?;
                let lists = Offsets(lists);
                let items = Strings::parse(items, lists.get(rows))?;
                Values::Lists { lists, items }
            }
            other => return Err(format!("column {c}: unknown kind {other}")),
        };
        Ok(Column {
            kind,
            present,
            values,
            ascii: Cell::new(0),
        })
    }
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u32).to_le_bytes());
}

fn put_strings(out: &mut Vec<u8>, strings: &StringColumn) {
    for o in &strings.offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&strings.data);
}

/// Packs a batch that arrived typed (from a host older than 0.1.2).
pub(crate) fn pack_typed(batch: &RecordBatch) -> Vec<u8> {
    let rows = batch.rows as usize;
    let count = batch.columns.len();
    let mut out = Vec::new();
    put_u32(&mut out, rows);
    put_u32(&mut out, count);
    out.resize(HEADER + DIRECTORY_ENTRY * count, 0);
    for (c, column) in batch.columns.iter().enumerate() {
        let start = out.len();
        if let Some(present) = &column.present {
            out.extend(present.iter().map(|&p| u8::from(p)));
        }
        let kind = match &column.values {
            ColumnValues::String(s) => {
                put_strings(&mut out, s);
                STRING
            }
            ColumnValues::Int64(v) | ColumnValues::Timestamp(v) => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                if matches!(column.values, ColumnValues::Int64(_)) {
                    INT64
                } else {
                    TIMESTAMP
                }
            }
            ColumnValues::Float64(v) => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                FLOAT64
            }
            ColumnValues::Boolean(v) => {
                out.extend(v.iter().map(|&b| u8::from(b)));
                BOOL
            }
            ColumnValues::StringList(l) => {
                for o in &l.lists {
                    out.extend_from_slice(&o.to_le_bytes());
                }
                put_strings(&mut out, &l.items);
                STRING_LIST
            }
        };
        let len = out.len() - start;
        let entry = HEADER + DIRECTORY_ENTRY * c;
        out[entry] = kind;
        out[entry + 1] = u8::from(column.present.is_some());
        out[entry + 4..entry + 8].copy_from_slice(&(start as u32).to_le_bytes());
        out[entry + 8..entry + 12].copy_from_slice(&(len as u32).to_le_bytes());
    }
    out
}

/// Writes verdicts in the packed layout as a validator gives them: qualities straight into
/// the answer, rejections and rewrites aside (they allocate only when there are any).
pub(crate) struct VerdictWriter {
    out: Vec<u8>,
    rejections: Vec<u8>,
    rejected: u32,
    rewrites: Vec<u8>,
    rewritten: u32,
}

impl VerdictWriter {
    pub(crate) fn new(rows: usize) -> Self {
        // Room for the two counts too: an answer with nothing rejected or rewritten is
        // written without growing.
        let mut out = Vec::with_capacity(4 + 8 * rows + 8);
        put_u32(&mut out, rows);
        Self {
            out,
            rejections: Vec::new(),
            rejected: 0,
            rewrites: Vec::new(),
            rewritten: 0,
        }
    }

    pub(crate) fn quality(&mut self, quality: f64) {
        self.out.extend_from_slice(&quality.to_le_bytes());
    }

    pub(crate) fn reject(&mut self, row: usize, reason: &str) {
        self.rejected += 1;
        put_u32(&mut self.rejections, row);
        put_u32(&mut self.rejections, reason.len());
        self.rejections.extend_from_slice(reason.as_bytes());
    }

    pub(crate) fn rewrite(&mut self, row: usize, field: usize, value: &NewValue) {
        self.rewritten += 1;
        let out = &mut self.rewrites;
        put_u32(out, row);
        put_u32(out, field);
        let put_str = |out: &mut Vec<u8>, s: &str| {
            put_u32(out, s.len());
            out.extend_from_slice(s.as_bytes());
        };
        match value {
            NewValue::Null => out.push(NULL),
            NewValue::String(s) => {
                out.push(STRING);
                put_str(out, s);
            }
            NewValue::Int64(v) => {
                out.push(INT64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            NewValue::Float64(v) => {
                out.push(FLOAT64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            NewValue::Bool(v) => {
                out.push(BOOL);
                out.push(u8::from(*v));
            }
            NewValue::Timestamp(v) => {
                out.push(TIMESTAMP);
                out.extend_from_slice(&v.to_le_bytes());
            }
            NewValue::StringList(items) => {
                out.push(STRING_LIST);
                put_u32(out, items.len());
                for item in items {
                    put_str(out, item);
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = self.out;
        out.reserve(8 + self.rejections.len() + self.rewrites.len());
        out.extend_from_slice(&self.rejected.to_le_bytes());
        out.extend_from_slice(&self.rejections);
        out.extend_from_slice(&self.rewritten.to_le_bytes());
        out.extend_from_slice(&self.rewrites);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Column as TypedColumn, StringListColumn};

    fn strings(values: &[&str]) -> StringColumn {
        let mut data = Vec::new();
        let mut offsets = vec![0u32];
        for v in values {
            data.extend_from_slice(v.as_bytes());
            offsets.push(data.len() as u32);
        }
        StringColumn { data, offsets }
    }

    fn col<'b, 'a>(batch: &'b Batch<'a>, i: usize) -> &'b Column<'a> {
        batch.column(i).expect("a column")
    }

    #[test]
    fn typed_batches_pack_into_the_layout_and_read_back() {
        let batch = RecordBatch {
            rows: 3,
            columns: vec![
                TypedColumn {
                    values: ColumnValues::String(strings(&["a", "", "ccc"])),
                    present: None,
                },
                TypedColumn {
                    values: ColumnValues::Int64(vec![-1, 0, i64::MAX]),
                    present: Some(vec![true, false, true]),
                },
                TypedColumn {
                    values: ColumnValues::Float64(vec![0.5, 1.5, -2.0]),
                    present: None,
                },
                TypedColumn {
                    values: ColumnValues::Boolean(vec![true, false, true]),
                    present: None,
                },
                TypedColumn {
                    values: ColumnValues::Timestamp(vec![7, 8, 9]),
                    present: None,
                },
                TypedColumn {
                    values: ColumnValues::StringList(StringListColumn {
                        lists: vec![0, 2, 2, 3],
                        items: strings(&["x", "yy", "z"]),
                    }),
                    present: Some(vec![true, false, true]),
                },
            ],
        };
        let bytes = pack_typed(&batch);
        let packed = Batch::parse(&bytes).expect("parse");
        assert_eq!(packed.rows, 3);
        let kinds: Vec<u8> = (0..packed.column_count())
            .map(|c| col(&packed, c).kind)
            .collect();
        assert_eq!(
            kinds,
            vec![STRING, INT64, FLOAT64, BOOL, TIMESTAMP, STRING_LIST]
        );
        let Values::Strings(s) = col(&packed, 0).values else {
            panic!("strings")
        };
        assert_eq!(
            (s.bytes(0), s.bytes(1), s.bytes(2)),
            (&b"a"[..], &b""[..], &b"ccc"[..])
        );
        assert_eq!(i64::from_le_bytes(col(&packed, 1).word(2)), i64::MAX);
        assert!(!col(&packed, 1).present(1) && col(&packed, 1).present(0));
        assert_eq!(f64::from_le_bytes(col(&packed, 2).word(2)), -2.0);
        let Values::Bools(b) = col(&packed, 3).values else {
            panic!("bools")
        };
        assert_eq!(b, &[1, 0, 1]);
        assert_eq!(i64::from_le_bytes(col(&packed, 4).word(1)), 8);
        let Values::Lists { lists, items } = col(&packed, 5).values else {
            panic!("lists")
        };
        assert_eq!((lists.get(0), lists.get(1), lists.get(3)), (0, 2, 3));
        assert_eq!(items.bytes(1), b"yy");
        assert_eq!(col(&packed, 5).string_data(), b"xyyz");
    }

    #[test]
    fn wide_batches_spill_past_the_inline_columns() {
        let batch = RecordBatch {
            rows: 1,
            columns: (0..20)
                .map(|i| TypedColumn {
                    values: ColumnValues::Int64(vec![i]),
                    present: None,
                })
                .collect(),
        };
        let bytes = pack_typed(&batch);
        let packed = Batch::parse(&bytes).expect("parse");
        assert_eq!(packed.column_count(), 20);
        let read: Vec<i64> = (0..20)
            .map(|c| i64::from_le_bytes(col(&packed, c).word(0)))
            .collect();
        assert_eq!(read, (0..20).collect::<Vec<i64>>());
        assert!(packed.column(20).is_none());
        // A directory claiming more columns than the buffer could hold is refused.
        let mut lying = bytes.clone();
        lying[4..8].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(Batch::parse(&lying)
            .expect_err("count")
            .contains("do not fit"));
    }

    #[test]
    fn broken_buffers_are_refused_or_read_as_empty() {
        assert!(Batch::parse(&[1, 0, 0]).is_err(), "no header");
        // One string column whose section claims more than the buffer has.
        let mut bytes = vec![2, 0, 0, 0, 1, 0, 0, 0, STRING, 0, 0, 0];
        bytes.extend_from_slice(&20u32.to_le_bytes());
        bytes.extend_from_slice(&100u32.to_le_bytes());
        assert!(Batch::parse(&bytes)
            .expect_err("outside")
            .contains("outside the buffer"));
        // Offsets that point past the data read as empty strings.
        let mut bytes = vec![1, 0, 0, 0, 1, 0, 0, 0, STRING, 0, 0, 0];
        bytes.extend_from_slice(&20u32.to_le_bytes());
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&50u32.to_le_bytes());
        bytes.push(b'a');
        let packed = Batch::parse(&bytes).expect("parse");
        let Values::Strings(s) = col(&packed, 0).values else {
            panic!("strings")
        };
        assert_eq!(s.bytes(0), b"");
        assert!(
            Batch::parse(&[1, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0])
                .expect_err("kind")
                .contains("unknown kind 9")
        );
    }

    #[test]
    fn verdicts_are_written_in_the_layout() {
        let mut w = VerdictWriter::new(2);
        w.quality(0.25);
        w.quality(0.0);
        w.reject(1, "no");
        w.rewrite(0, 3, &NewValue::String("hi".into()));
        let bytes = w.finish();
        let mut expected = 2u32.to_le_bytes().to_vec();
        expected.extend_from_slice(&0.25f64.to_le_bytes());
        expected.extend_from_slice(&0.0f64.to_le_bytes());
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"no");
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.push(STRING);
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"hi");
        assert_eq!(bytes, expected);
    }
}
