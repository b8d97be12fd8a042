//! What a model takes and gives: its tensors' names, datatypes (the Open Inference Protocol's
//! names) and per-request shapes, and where its program comes from. One request is one row: its
//! input bytes go into its row of the worker's shared-memory slot as they came (row-major,
//! little-endian), and its output row comes back the same way.

use serde::{Deserialize, Serialize};

/// A tensor element type, named as in the Open Inference Protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// 1-byte boolean.
    Bool,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Signed 8-bit integer.
    Int8,
    /// Signed 16-bit integer.
    Int16,
    /// Signed 32-bit integer.
    Int32,
    /// Signed 64-bit integer.
    Int64,
    /// IEEE half.
    Fp16,
    /// IEEE single.
    Fp32,
    /// IEEE double.
    Fp64,
}

impl DataType {
    /// Every type, for messages.
    pub const ALL: [DataType; 9] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 | DataType::Fp16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// The protocol's name (`FP32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// The type named `name` (as the protocol spells it).
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One input or output tensor of a model, per request (without the batch dimension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datatype: DataType,
    /// Its shape for one request (every dimension fixed, at least 1).
    pub dims: Vec<i64>,
}

impl TensorSpec {
    /// Elements per request.
    pub fn elements(&self) -> usize {
        self.dims.iter().map(|d| (*d).max(0) as usize).product()
    }

    /// Bytes per request.
    pub fn bytes(&self) -> usize {
        self.elements() * self.datatype.size()
    }
}

/// A model's inputs and outputs. The worker serves models of one input and one output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelIo {
    /// Its input tensors.
    pub inputs: Vec<TensorSpec>,
    /// Its output tensors.
    pub outputs: Vec<TensorSpec>,
}

/// Whether `name` is 1-64 characters of A-Z a-z 0-9 _ - . (names that come from users: tensors,
/// models).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Most elements one tensor of one request may have (a 4K RGB image is 25 M): bounds the
/// shared memory a worker maps.
pub const MAX_ELEMENTS: usize = 1 << 26;

impl ModelIo {
    /// An ImageNet classifier (every torchvision benchmark model): `input` FP32 [3, 224, 224],
    /// `output` FP32 [1000] (the logits).
    pub fn image_classifier() -> ModelIo {
        let spec = |name: &str, dims: Vec<i64>| TensorSpec { name: name.into(), datatype: DataType::Fp32, dims };
        ModelIo { inputs: vec![spec("input", vec![3, 224, 224])], outputs: vec![spec("output", vec![1000])] }
    }

    /// The input tensor (there is one; see `problem`).
    pub fn input(&self) -> &TensorSpec {
        &self.inputs[0]
    }

    /// The output tensor.
    pub fn output(&self) -> &TensorSpec {
        &self.outputs[0]
    }

    /// Why workers cannot serve this, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.inputs.len() != 1 || self.outputs.len() != 1 {
            return Some(format!(
                "models with one input and one output tensor are served; this one has {} inputs and {} outputs",
                self.inputs.len(),
                self.outputs.len()
            ));
        }
        for t in self.inputs.iter().chain(&self.outputs) {
            if !plain_name(&t.name) {
                return Some(format!("tensor name {:?} must be 1-64 characters of A-Z a-z 0-9 _ - .", t.name));
            }
            if t.dims.is_empty() || t.dims.iter().any(|d| *d < 1) {
                return Some(format!("tensor {}: every dimension must be at least 1, got {:?}", t.name, t.dims));
            }
            let elements = t.dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d as usize));
            if elements.is_none_or(|e| e > MAX_ELEMENTS) {
                return Some(format!(
                    "tensor {}: more than {MAX_ELEMENTS} elements per request ({:?})",
                    t.name, t.dims
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classifier_takes_an_image_and_gives_logits() {
        let io = ModelIo::image_classifier();
        assert_eq!(io.problem(), None);
        assert_eq!((io.input().bytes(), io.output().bytes()), (3 * 224 * 224 * 4, 4000));
        assert_eq!(DataType::parse("FP16").map(DataType::size), Some(2));
        assert_eq!(DataType::parse("fp16"), None);
    }

    #[test]
    fn bad_shapes_and_names_are_refused_with_the_reason() {
        let mut io = ModelIo::image_classifier();
        io.inputs[0].dims = vec![3, 0];
        assert!(io.problem().unwrap().contains("at least 1"));
        io.inputs[0].dims = vec![1 << 20, 1 << 20];
        assert!(io.problem().unwrap().contains("elements"));
        io.inputs[0].dims = vec![3];
        io.outputs[0].name = "../x".into();
        assert!(io.problem().unwrap().contains("tensor name"));
        io.outputs.clear();
        assert!(io.problem().unwrap().contains("one input and one output"));
    }
}
