//! Where input text comes from: a file on disk, or data embedded in the binary (`builtin:NAME`),
//! so the default scenario runs on any machine without the repository beside it.

use crate::error::{DataError, Result};
use std::path::Path;

/// Embedded data sets, by name. Their origin and licenses: `traces/data/SOURCES.md`.
const BUILTINS: &[(&str, &str)] = &[
    ("h100-cudagraph", include_str!("../data/calibration/h100/torch_cudagraph_fp16.csv")),
    ("h100-eager", include_str!("../data/calibration/h100/torch_eager_fp16.csv")),
    // Measured with `gpuslice profile` and fitted with `gpuslice calibrate` (profiles/h100/README.md).
    ("h100-grid", include_str!("../../profiles/h100/grid.csv")),
    ("h100-calibration", include_str!("../../profiles/h100/calibration.toml")),
    ("h100-colocation", include_str!("../../profiles/h100/colocation.csv")),
    // The same on the H200 (profiles/h200/README.md).
    ("h200-grid", include_str!("../../profiles/h200/grid.csv")),
    ("h200-calibration", include_str!("../../profiles/h200/calibration.toml")),
    ("h200-colocation", include_str!("../../profiles/h200/colocation.csv")),
    ("azure-llm-code", include_str!("../data/azure_llm_2023/AzureLLMInferenceTrace_code.csv")),
    ("azure-llm-conv", include_str!("../data/azure_llm_2023/AzureLLMInferenceTrace_conv.csv")),
    ("azure-functions-2019", include_str!("../data/azure_functions_2019/1000_inv.csv")),
];

/// The embedded calibration measured on the GPU NVML names `device_name` (`NVIDIA H200` ->
/// `builtin:h200-calibration`), if there is one.
pub fn device_calibration(device_name: &str) -> Option<&'static str> {
    const BY_DEVICE: &[(&str, &str)] = &[("H200", "builtin:h200-calibration"), ("H100", "builtin:h100-calibration")];
    BY_DEVICE.iter().find(|(gpu, _)| device_name.contains(gpu)).map(|(_, calibration)| *calibration)
}

/// The prefix that names embedded data instead of a file.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Names of the embedded data sets.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(name, _)| *name)
}

/// The GPU time of one batch that measured files may hold, in ms: from a microsecond (no
/// kernel launch is faster) to an hour.
pub const BATCH_MS_RANGE: (f64, f64) = (1e-3, 3_600_000.0);

/// Why `ms` cannot be a measured batch's GPU time, if it cannot: outside `BATCH_MS_RANGE` (a
/// time of 1e-300 ms fitted to relative errors of inf%).
pub fn batch_ms_problem(ms: f64) -> Option<String> {
    let (low, high) = BATCH_MS_RANGE;
    let ok = ms.is_finite() && (low..=high).contains(&ms);
    (!ok).then(|| format!("must be a batch time in [{low}, {high}] ms, got {}", number(ms)))
}

/// `v` as a person reads it in an error: plain where it is of everyday size, in exponent form
/// where plain would run to hundreds of digits (1e-300, 1e300).
pub fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-4..1e9).contains(&v.abs()) { v.to_string() } else { format!("{v:e}") }
}

/// The largest file `Source::load_confined` reads.
pub const MAX_CONFINED_BYTES: u64 = 16 << 20;

/// A loaded input: its display name (for errors) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its name in errors: a path, or `builtin:NAME`.
    pub name: String,
    /// Its contents.
    pub text: std::borrow::Cow<'static, str>,
}

impl Source {
    /// Loads `spec`: `builtin:NAME`, or a path, relative paths taken from `base_dir`.
    pub fn load(spec: &str, base_dir: &Path) -> Result<Source> {
        if let Some(name) = spec.strip_prefix(BUILTIN_PREFIX) {
            return BUILTINS
                .iter()
                .find(|(builtin, _)| *builtin == name)
                .map(|(_, text)| Source { name: spec.to_string(), text: (*text).into() })
                .ok_or_else(|| {
                    let known: Vec<_> = builtin_names().collect();
                    DataError::malformed(
                        spec,
                        None,
                        None,
                        format!("no such built-in data set; known: {}", known.join(", ")),
                    )
                });
        }
        Source::read_file(&base_dir.join(spec))
    }

    /// Reads the file at `path` (an operator's own: a scenario, a node config, a trace), which
    /// must be a regular file of at most `MAX_FILE_BYTES` (see `read_regular`).
    pub fn read_file(path: &Path) -> Result<Source> {
        let name = path.display().to_string();
        let text = read_regular(path, MAX_FILE_BYTES).map_err(|refusal| refusal.into_error(&name))?;
        Ok(Source { name, text: text.into() })
    }

    /// Reads `relative` under the folder `root`: a regular file of at most `max_bytes` whose
    /// real path (symbolic links and `..` resolved) lies under `root`'s. Errors name the file
    /// and say what is wrong with it (for files an operator placed, such as a model
    /// repository's; a request from outside gets `load_confined`'s single answer instead).
    pub fn read_confined(root: &Path, relative: &Path, max_bytes: u64) -> Result<Source> {
        let name = root.join(relative).display().to_string();
        let path = confined_path(root, relative).map_err(|problem| DataError::malformed(&name, None, None, problem))?;
        let text = read_regular(&path, max_bytes).map_err(|refusal| refusal.into_error(&name))?;
        Ok(Source { name, text: text.into() })
    }

    /// Parses the text as TOML. The error says where (line, column) and what, without quoting
    /// the text: a file named by mistake is not echoed to whoever named it.
    pub fn parse_toml<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(&self.text).map_err(|e| {
            let (line, column) = e.span().map_or((None, None), |span| {
                let before = &self.text[..span.start.min(self.text.len())];
                let line = before.matches('\n').count() as u64 + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (Some(line), Some(column))
            });
            let at = column.map_or(String::new(), |c| format!("column {c}: "));
            DataError::malformed(&self.name, line, None, format!("{at}not valid TOML: {}", e.message().trim()))
        })
    }

    /// Loads `spec` for a request from outside (a gRPC call): `builtin:NAME`, or a regular file
    /// of at most `MAX_CONFINED_BYTES` whose real path (symbolic links and `..` resolved) lies
    /// under one of `roots` (a relative path is taken from each root in turn). Anything else
    /// (another file, a device, a FIFO, a folder, a missing file) is `DataError::NotAllowed`,
    /// which does not say which: the caller learns nothing about the machine's files. Nothing
    /// but a regular file is ever opened, so a FIFO cannot hang the call.
    pub fn load_confined(spec: &str, roots: &[std::path::PathBuf]) -> Result<Source> {
        if spec.starts_with(BUILTIN_PREFIX) {
            return Source::load(spec, Path::new("."));
        }
        let not_allowed = || DataError::NotAllowed(format!("{spec:?}"));
        let text = roots
            .iter()
            .find_map(|root| read_regular(&confined_path(root, Path::new(spec)).ok()?, MAX_CONFINED_BYTES).ok())
            .ok_or_else(not_allowed)?;
        Ok(Source { name: spec.to_string(), text: text.into() })
    }
}

/// The largest file `Source::read_file` reads: a day of a trace is tens of megabytes.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why a file was not read (`read_regular`).
#[derive(Debug)]
pub enum ReadRefusal {
    /// It could not be opened or read.
    Io(std::io::Error),
    /// It is not a regular file (a FIFO, a device, a folder, a socket).
    NotRegular,
    /// It holds more than the cap, in bytes.
    TooLarge(u64),
    /// It is not UTF-8 text.
    NotText,
}

impl ReadRefusal {
    fn into_error(self, name: &str) -> DataError {
        match self {
            ReadRefusal::Io(cause) => DataError::io(name, cause),
            ReadRefusal::NotRegular => DataError::malformed(name, None, None, "not a regular file"),
            ReadRefusal::TooLarge(cap) => DataError::malformed(name, None, None, format!("larger than {cap} bytes")),
            ReadRefusal::NotText => DataError::malformed(name, None, None, "not UTF-8 text"),
        }
    }
}

/// The text of `path` if it is a regular file of at most `max_bytes`. The file is opened
/// without blocking (opening a FIFO would otherwise wait for a writer for ever) and checked
/// once open (so that a file swapped after a check cannot pass), and never read past the cap
/// (a device such as /dev/zero is endless).
pub fn read_regular(path: &Path, max_bytes: u64) -> std::result::Result<String, ReadRefusal> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(ReadRefusal::Io)?;
    let meta = file.metadata().map_err(ReadRefusal::Io)?;
    if !meta.is_file() {
        return Err(ReadRefusal::NotRegular);
    }
    if meta.len() > max_bytes {
        return Err(ReadRefusal::TooLarge(max_bytes));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(ReadRefusal::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadRefusal::TooLarge(max_bytes));
    }
    String::from_utf8(bytes).map_err(|_| ReadRefusal::NotText)
}

/// `relative` under `root` with every symbolic link and `..` resolved, if that lies under
/// `root`'s own real path; else what is wrong, without saying where the path leads.
pub fn confined_path(root: &Path, relative: &Path) -> std::result::Result<std::path::PathBuf, String> {
    let root = root.canonicalize().map_err(|e| format!("its folder cannot be resolved: {e}"))?;
    let path = root.join(relative).canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be resolved: {e}"),
    })?;
    if !path.starts_with(&root) {
        return Err(format!("lies outside {} (through an absolute path, .. or a symbolic link)", root.display()));
    }
    Ok(path)
}

/// A CSV table with a header row, giving typed fields with errors that name file, line and column.
pub struct CsvTable<'a> {
    source: &'a Source,
    headers: csv::StringRecord,
}

impl<'a> CsvTable<'a> {
    /// Reads the header row of `source`; records come from the reader returned with it.
    pub fn new(source: &'a Source) -> Result<(CsvTable<'a>, csv::Reader<&'a [u8]>)> {
        let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(source.text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| DataError::malformed(&source.name, Some(1), None, format!("bad header row: {e}")))?
            .clone();
        Ok((CsvTable { source, headers }, reader))
    }

    /// The header row.
    pub fn headers(&self) -> &csv::StringRecord {
        &self.headers
    }

    /// Index of a required column.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.headers.iter().position(|h| h == name).ok_or_else(|| {
            DataError::malformed(&self.source.name, Some(1), Some(name), "required column is missing from the header")
        })
    }

    /// The next record, or None at the end; a broken record is an error naming its line.
    pub fn next_record(&self, reader: &mut csv::Reader<&[u8]>, record: &mut csv::StringRecord) -> Result<bool> {
        reader.read_record(record).map_err(|e| {
            let line = e.position().map(|p| p.line());
            DataError::malformed(&self.source.name, line, None, format!("unreadable CSV record: {e}"))
        })
    }

    /// The line a record was read from.
    pub fn line(record: &csv::StringRecord) -> Option<u64> {
        record.position().map(|p| p.line())
    }

    /// Field `col` of `record`, parsed.
    pub fn parse<T: std::str::FromStr>(&self, record: &csv::StringRecord, col: usize) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let raw = record.get(col).ok_or_else(|| self.error(record, col, "field is missing (short row)"))?;
        if raw.is_empty() {
            return Err(self.error(record, col, "field is empty"));
        }
        raw.parse::<T>().map_err(|e| self.error(record, col, format!("cannot parse {raw:?}: {e}")))
    }

    /// A finite, strictly positive number from field `col`.
    pub fn positive(&self, record: &csv::StringRecord, col: usize) -> Result<f64> {
        let v: f64 = self.parse(record, col)?;
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.error(record, col, format!("must be a finite number > 0, got {}", number(v))))
        }
    }

    /// The value at `col` as a batch's GPU time in ms (see `batch_ms_problem`).
    pub fn batch_ms(&self, record: &csv::StringRecord, col: usize) -> Result<f64> {
        let v: f64 = self.parse(record, col)?;
        match batch_ms_problem(v) {
            None => Ok(v),
            Some(problem) => Err(self.error(record, col, problem)),
        }
    }

    /// An error naming this source, the record's line and the column.
    pub fn error(&self, record: &csv::StringRecord, col: usize, problem: impl Into<String>) -> crate::error::DataError {
        DataError::malformed(&self.source.name, Self::line(record), self.headers.get(col), problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        for path in ["/dev/zero", "/tmp"] {
            let error = Source::load(path, Path::new(".")).unwrap_err().to_string();
            assert!(error.contains(path) && error.contains("not a regular file"), "{error}");
        }
    }

    #[test]
    fn a_toml_error_says_where_without_quoting_the_text() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Doc {
            a: f64,
        }
        let source = Source { name: "secret.txt".into(), text: "a = 1\nroot:x:0:0:root:/root:/bin/bash\n".into() };
        let error = source.parse_toml::<Doc>().unwrap_err().to_string();
        assert!(error.starts_with("secret.txt:2: column "), "{error}");
        assert!(!error.contains("bin/bash") && !error.contains("root:x"), "{error}");
    }

    #[test]
    fn each_device_finds_its_own_calibration() {
        assert_eq!(device_calibration("NVIDIA H200"), Some("builtin:h200-calibration"));
        assert_eq!(device_calibration("NVIDIA H100 80GB HBM3"), Some("builtin:h100-calibration"));
        assert_eq!(device_calibration("NVIDIA A100-SXM4-80GB"), None);
        for spec in [device_calibration("NVIDIA H200"), device_calibration("NVIDIA H100")].into_iter().flatten() {
            Source::load(spec, Path::new(".")).expect("embedded");
        }
    }
}
