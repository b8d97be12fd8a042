//! Readers for the real traces: Azure LLM inference 2023 (one timestamp per request) and
//! Azure Functions 2019 (invocations per function per minute).

use crate::error::{DataError, Result};
use crate::source::{CsvTable, Source};
use chrono::NaiveDateTime;

/// Arrival times of an Azure LLM 2023 trace (`TIMESTAMP,ContextTokens,GeneratedTokens`), in seconds
/// after its first request, ascending.
pub fn read_timestamps(source: &Source) -> Result<Vec<f64>> {
    let (table, mut reader) = CsvTable::new(source)?;
    let col = table.column("TIMESTAMP")?;
    let mut record = csv::StringRecord::new();
    let mut stamps = Vec::new();
    while table.next_record(&mut reader, &mut record)? {
        let raw = record.get(col).unwrap_or("");
        let stamp = NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f").map_err(|e| {
            table.error(&record, col, format!("bad timestamp {raw:?} ({e}); expected YYYY-MM-DD HH:MM:SS.fffffff"))
        })?;
        stamps.push(stamp);
    }
    let first =
        *stamps.iter().min().ok_or_else(|| DataError::malformed(&source.name, None, None, "trace has no requests"))?;
    let mut times: Vec<f64> =
        stamps.iter().map(|s| (*s - first).num_nanoseconds().map_or(f64::INFINITY, |ns| ns as f64 * 1e-9)).collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Per-minute invocation counts of Azure Functions 2019 (`HashFunction,HashApp,HashOwner,1..N`).
#[derive(Debug, Clone)]
pub struct FunctionCounts {
    /// Function hashes, in file order.
    pub functions: Vec<String>,
    /// counts[f][minute]
    pub counts: Vec<Vec<u32>>,
    /// Minutes in the trace.
    pub minutes: usize,
}

/// Which functions of a trace drive one model.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum FunctionSelection {
    /// `"all"`: every function, summed.
    All(AllKeyword),
    /// Row indices (0 = first function row).
    Indices(Vec<usize>),
    /// Function hashes (`HashFunction`).
    Hashes(Vec<String>),
    /// Every `every`-th function starting at `offset` (to split a trace over several models).
    Modulo {
        /// Take one function in this many...
        every: usize,
        /// ...starting at this index.
        offset: usize,
    },
}

/// The keyword `"all"` of a function selection.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllKeyword {
    /// `"all"`.
    All,
}

impl FunctionCounts {
    /// Reads the trace; a malformed row is an error naming its line.
    pub fn parse(source: &Source) -> Result<FunctionCounts> {
        let (table, mut reader) = CsvTable::new(source)?;
        let hash = table.column("HashFunction")?;
        let first_minute = table.column("minute_1").or_else(|_| table.column("1"))?;
        let minutes = table.headers().len() - first_minute;
        let mut record = csv::StringRecord::new();
        let (mut functions, mut counts) = (Vec::new(), Vec::new());
        while table.next_record(&mut reader, &mut record)? {
            if record.len() != table.headers().len() {
                return Err(DataError::malformed(
                    &source.name,
                    CsvTable::line(&record),
                    None,
                    format!("row has {} fields, header has {}", record.len(), table.headers().len()),
                ));
            }
            functions.push(table.parse::<String>(&record, hash)?);
            let row: Result<Vec<u32>> = (first_minute..record.len()).map(|c| table.parse::<u32>(&record, c)).collect();
            counts.push(row?);
        }
        if functions.is_empty() {
            return Err(DataError::malformed(&source.name, None, None, "trace has no function rows"));
        }
        Ok(FunctionCounts { functions, counts, minutes })
    }

    /// Per-minute sums over the selected functions.
    pub fn select(&self, selection: &FunctionSelection, source: &str) -> Result<Vec<u64>> {
        let rows: Vec<usize> = match selection {
            FunctionSelection::All(_) => (0..self.functions.len()).collect(),
            FunctionSelection::Indices(rows) => {
                if let Some(bad) = rows.iter().find(|r| **r >= self.functions.len()) {
                    return Err(DataError::malformed(
                        source,
                        None,
                        Some("functions"),
                        format!(
                            "function index {bad} is out of range; the trace has {} functions",
                            self.functions.len()
                        ),
                    ));
                }
                rows.clone()
            }
            FunctionSelection::Hashes(hashes) => hashes
                .iter()
                .map(|h| {
                    self.functions.iter().position(|f| f == h).ok_or_else(|| {
                        DataError::malformed(source, None, Some("functions"), format!("no function with hash {h}"))
                    })
                })
                .collect::<Result<_>>()?,
            FunctionSelection::Modulo { every, offset } => {
                if *every == 0 || offset >= every {
                    return Err(DataError::malformed(
                        source,
                        None,
                        Some("functions"),
                        "need every > 0 and offset < every",
                    ));
                }
                (*offset..self.functions.len()).step_by(*every).collect()
            }
        };
        let mut sums = vec![0u64; self.minutes];
        for row in rows {
            for (sum, c) in sums.iter_mut().zip(&self.counts[row]) {
                *sum += u64::from(*c);
            }
        }
        Ok(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn text(name: &str, text: &str) -> Source {
        Source { name: name.into(), text: text.to_string().into() }
    }

    #[test]
    fn shipped_traces_parse() {
        let code = read_timestamps(&Source::load("builtin:azure-llm-code", Path::new(".")).unwrap()).unwrap();
        assert_eq!(code.len(), 8819);
        assert_eq!(code[0], 0.0);
        assert!(code.windows(2).all(|w| w[0] <= w[1]));
        let functions =
            FunctionCounts::parse(&Source::load("builtin:azure-functions-2019", Path::new(".")).unwrap()).unwrap();
        assert_eq!((functions.functions.len(), functions.minutes), (1000, 1440));
        let total: u64 = functions.select(&FunctionSelection::All(AllKeyword::All), "t").unwrap().iter().sum();
        assert_eq!(total, 11_639_447);
        let split: u64 = (0..8)
            .map(|o| {
                functions.select(&FunctionSelection::Modulo { every: 8, offset: o }, "t").unwrap().iter().sum::<u64>()
            })
            .sum();
        assert_eq!(split, total);
    }

    #[test]
    fn malformed_traces_name_file_line_and_field() {
        let err = read_timestamps(&text("llm.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.97,5\nyesterday,4\n"))
            .unwrap_err();
        assert_eq!(err.to_string().split(": bad").next().unwrap(), "llm.csv:3 field `TIMESTAMP`");
        let err = FunctionCounts::parse(&text(
            "f.csv",
            "HashFunction,HashApp,HashOwner,minute_1,minute_2\na,b,c,1,2\nd,e,f,3,x\n",
        ))
        .unwrap_err();
        assert!(err.to_string().starts_with("f.csv:3 field `minute_2`: cannot parse \"x\""), "{err}");
        let err =
            FunctionCounts::parse(&text("f.csv", "HashFunction,HashApp,HashOwner,minute_1\na,b,c,1,2\n")).unwrap_err();
        assert!(err.to_string().contains("f.csv:2"), "{err}");
        let err = read_timestamps(&text("e.csv", "Other\n1\n")).unwrap_err();
        assert!(err.to_string().contains("`TIMESTAMP`: required column is missing"), "{err}");
    }
}
