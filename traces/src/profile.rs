//! Calibration profiles: latency measured per model, GPU share and batch size, in the schema of
//! `shared/calibration` (`engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s`).

use crate::error::{DataError, Result};
use crate::source::{CsvTable, Source};
use std::collections::BTreeMap;

/// One measured point: a model at one GPU% and batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfilePoint {
    /// MPS active-thread percentage.
    pub gpu_pct: f64,
    /// Batch size.
    pub batch: u32,
    /// Median batch latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

/// Everything measured for one model.
#[derive(Debug, Clone)]
pub struct ModelProfile {
    /// The model (torchvision name).
    pub model: String,
    /// What ran it (e.g. `cudagraph`).
    pub engine: String,
    /// Its precision (e.g. `fp16`).
    pub dtype: String,
    /// Every measured point.
    pub points: Vec<ProfilePoint>,
}

impl ModelProfile {
    /// The distinct GPU% values measured, ascending.
    pub fn gpu_levels(&self) -> Vec<f64> {
        let mut levels: Vec<f64> = self.points.iter().map(|p| p.gpu_pct).collect();
        levels.sort_by(f64::total_cmp);
        levels.dedup();
        levels
    }
}

/// All models of one profile file, by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    /// Where it was read from.
    pub source: String,
    /// By model name.
    pub models: BTreeMap<String, ModelProfile>,
}

impl ProfileSet {
    /// Reads a profile CSV; a malformed row is an error naming its line and field.
    pub fn parse(source: &Source) -> Result<ProfileSet> {
        let (table, mut reader) = CsvTable::new(source)?;
        let col = |name| table.column(name);
        let (engine, model, dtype) = (col("engine")?, col("model")?, col("dtype")?);
        let (gpu_pct, batch) = (col("gpu_pct")?, col("batch")?);
        let (p50, p99, mean) = (col("p50_ms")?, col("p99_ms")?, col("mean_ms")?);

        let mut models: BTreeMap<String, ModelProfile> = BTreeMap::new();
        let mut record = csv::StringRecord::new();
        while table.next_record(&mut reader, &mut record)? {
            let name: String = table.parse(&record, model)?;
            let point = ProfilePoint {
                gpu_pct: table.positive(&record, gpu_pct)?,
                batch: table.parse(&record, batch)?,
                p50_ms: table.batch_ms(&record, p50)?,
                p99_ms: table.batch_ms(&record, p99)?,
                mean_ms: table.batch_ms(&record, mean)?,
            };
            if point.gpu_pct > 100.0 {
                return Err(table.error(&record, gpu_pct, format!("GPU% must be in (0, 100], got {}", point.gpu_pct)));
            }
            if point.batch == 0 {
                return Err(table.error(&record, batch, "batch must be at least 1"));
            }
            if point.p99_ms < point.p50_ms {
                return Err(table.error(
                    &record,
                    p99,
                    format!("p99 {} ms is below p50 {} ms", point.p99_ms, point.p50_ms),
                ));
            }
            let engine_name: String = table.parse(&record, engine)?;
            let dtype_name: String = table.parse(&record, dtype)?;
            let entry = models.entry(name.clone()).or_insert_with(|| ModelProfile {
                model: name.clone(),
                engine: engine_name.clone(),
                dtype: dtype_name.clone(),
                points: Vec::new(),
            });
            if entry.engine != engine_name || entry.dtype != dtype_name {
                return Err(table.error(
                    &record,
                    engine,
                    format!(
                        "model {name} appears with engine/dtype {engine_name}/{dtype_name} and {}/{}; keep one per file",
                        entry.engine, entry.dtype
                    ),
                ));
            }
            if entry.points.iter().any(|p| p.gpu_pct == point.gpu_pct && p.batch == point.batch) {
                return Err(table.error(
                    &record,
                    batch,
                    format!("duplicate point for {name} at GPU% {} batch {}", point.gpu_pct, point.batch),
                ));
            }
            entry.points.push(point);
        }
        if models.is_empty() {
            return Err(DataError::malformed(&source.name, None, None, "profile has no data rows"));
        }
        Ok(ProfileSet { source: source.name.clone(), models })
    }

    /// The profile of `name`, or an error listing the models there are.
    pub fn model(&self, name: &str) -> Result<&ModelProfile> {
        self.models.get(name).ok_or_else(|| {
            let known: Vec<_> = self.models.keys().map(String::as_str).collect();
            DataError::malformed(
                &self.source,
                None,
                None,
                format!("unknown model {name:?}; the profile has: {}", known.join(", ")),
            )
        })
    }
}
