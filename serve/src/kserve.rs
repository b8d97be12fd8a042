//! The standard inference protocol (`inference.GRPCInferenceService`, KServe v2 / Open Inference
//! Protocol) on the same port as `gpuslice.v1`: health and metadata, ModelInfer, and the model
//! repository extension mapped onto registration. A ModelInfer of N rows (the first dimension)
//! is N requests to the controller, batched with everyone else's; each row gets its own output.

use crate::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::model_infer_response::InferOutputTensor;
use crate::inference::model_metadata_response::TensorMetadata;
use crate::inference::repository_index_response::ModelIndex;
use crate::inference::*;
use crate::live::{Command, LiveError, LiveHandle, ModelView};
use crate::repository::Repository;
use bytes::Bytes;
use futures_util::future::try_join_all;
use gpuslice_control::tensors::{DataType, TensorSpec};
use tonic::{Request, Response, Status};

/// Most rows one ModelInfer may carry.
pub const MAX_ROWS: usize = 4096;

/// The inference protocol's service.
pub struct InferenceService {
    live: LiveHandle,
    repository: Option<Repository>,
}

impl InferenceService {
    /// Serves the controller behind `live`, with `repository` for the repository extension.
    pub fn new(live: LiveHandle, repository: Option<Repository>) -> InferenceService {
        InferenceService { live, repository }
    }

    async fn describe(&self, name: &str) -> Result<ModelView, Status> {
        let name = name.to_string();
        Ok(self.live.ask(|reply| Command::Describe(name, reply)).await?)
    }

    fn repository(&self) -> Result<&Repository, Status> {
        self.repository
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node serves no model repository (--model-repository)"))
    }
}

/// The protocol's shape of a tensor: the batch dimension (-1: any), then the per-request dims.
fn metadata(t: &TensorSpec) -> TensorMetadata {
    TensorMetadata { name: t.name.clone(), datatype: t.datatype.name().to_string(), shape: batched(-1, &t.dims) }
}

fn batched(rows: i64, dims: &[i64]) -> Vec<i64> {
    std::iter::once(rows).chain(dims.iter().copied()).collect()
}

/// The longest piece of a client's text (a name, a datatype) an error quotes.
const ECHO_CHARS: usize = 64;
/// The most dimensions of a client's shape an error quotes.
const ECHO_DIMS: usize = 8;

/// Client text as an error quotes it: whole if short, else its start and its length, so that a
/// megabyte name cannot swell the reply past the client's metadata limit.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// A client's shape as an error quotes it (its first `ECHO_DIMS` dimensions and how many).
fn quoted_shape(shape: &[i64]) -> String {
    match shape.len() > ECHO_DIMS {
        false => format!("{shape:?}"),
        true => format!("{:?}... ({} dimensions)", &shape[..ECHO_DIMS], shape.len()),
    }
}

/// The input's elements as little-endian bytes, from `raw` or from the typed contents.
fn input_bytes(input: &InferInputTensor, raw: Option<Bytes>, datatype: DataType) -> Result<Bytes, Status> {
    if let Some(raw) = raw {
        return Ok(raw);
    }
    let Some(c) = &input.contents else {
        return Err(Status::invalid_argument(format!(
            "input {} has no data: neither raw_input_contents nor contents",
            quoted(&input.name)
        )));
    };
    let le = |v: &mut Vec<u8>, b: &[u8]| v.extend_from_slice(b);
    let mut out = Vec::new();
    match datatype {
        DataType::Bool => c.bool_contents.iter().for_each(|b| out.push(*b as u8)),
        DataType::Uint8 => c.uint_contents.iter().for_each(|x| out.push(*x as u8)),
        DataType::Int8 => c.int_contents.iter().for_each(|x| le(&mut out, &(*x as i8).to_le_bytes())),
        DataType::Int16 => c.int_contents.iter().for_each(|x| le(&mut out, &(*x as i16).to_le_bytes())),
        DataType::Int32 => c.int_contents.iter().for_each(|x| le(&mut out, &x.to_le_bytes())),
        DataType::Int64 => c.int64_contents.iter().for_each(|x| le(&mut out, &x.to_le_bytes())),
        DataType::Fp32 => c.fp32_contents.iter().for_each(|x| le(&mut out, &x.to_le_bytes())),
        DataType::Fp64 => c.fp64_contents.iter().for_each(|x| le(&mut out, &x.to_le_bytes())),
        DataType::Fp16 => {
            return Err(Status::invalid_argument(format!(
                "input {}: FP16 has no typed contents in the protocol; send raw_input_contents",
                quoted(&input.name)
            )));
        }
    }
    Ok(out.into())
}

/// Checks the request's one input against the model's and splits it into one row per request.
fn rows(request: &mut ModelInferRequest, spec: &TensorSpec) -> Result<Vec<Bytes>, Status> {
    if request.inputs.len() != 1 {
        return Err(Status::invalid_argument(format!(
            "model {} takes 1 input ({:?}), {} given",
            request.model_name,
            spec.name,
            request.inputs.len()
        )));
    }
    let input = &request.inputs[0];
    if input.name != spec.name {
        return Err(Status::invalid_argument(format!(
            "model {} has no input {}; its input is {:?}",
            request.model_name,
            quoted(&input.name),
            spec.name
        )));
    }
    let datatype = DataType::parse(&input.datatype);
    if datatype != Some(spec.datatype) {
        return Err(Status::invalid_argument(format!(
            "input {:?}: datatype {} expected, {} given",
            spec.name,
            spec.datatype.name(),
            quoted(&input.datatype)
        )));
    }
    let rows = input.shape.first().copied().unwrap_or(0);
    let expected = batched(rows, &spec.dims);
    if input.shape != expected || rows < 1 || rows as usize > MAX_ROWS {
        return Err(Status::invalid_argument(format!(
            "input {:?}: shape [N, {}] with 1 <= N <= {MAX_ROWS} expected, {} given",
            spec.name,
            spec.dims.iter().map(i64::to_string).collect::<Vec<_>>().join(", "),
            quoted_shape(&input.shape)
        )));
    }
    // One input: at most one raw buffer, and not beside typed contents (the protocol allows
    // one or the other); an extra one would be dropped unread.
    if request.raw_input_contents.len() > 1 || (!request.raw_input_contents.is_empty() && input.contents.is_some()) {
        return Err(Status::invalid_argument(format!(
            "input {:?}: {} raw_input_contents{} for 1 input; send one raw buffer or typed contents",
            spec.name,
            request.raw_input_contents.len(),
            if input.contents.is_some() { " beside typed contents" } else { "" }
        )));
    }
    // Taken, not copied: each row is a slice of the received message, copied once on the
    // host, into the worker's shared memory.
    let raw = (!request.raw_input_contents.is_empty()).then(|| std::mem::take(&mut request.raw_input_contents[0]));
    let bytes = input_bytes(input, raw, spec.datatype)?;
    let row = spec.bytes();
    if bytes.len() != rows as usize * row {
        return Err(Status::invalid_argument(format!(
            "input {:?}: {} bytes of data for shape {:?} ({} expected)",
            spec.name,
            bytes.len(),
            input.shape,
            rows as usize * row
        )));
    }
    request.raw_input_contents.clear();
    Ok((0..rows as usize).map(|i| bytes.slice(i * row..(i + 1) * row)).collect())
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    /// Ready once every model of the repository is loaded (and the controller answers).
    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        let (views, _) = self.live.ask(Command::List).await?;
        let ready = match &self.repository {
            None => true,
            Some(r) => {
                let names = r.names().map_err(|e| Status::internal(e.to_string()))?;
                names.iter().all(|n| views.iter().any(|v| &v.name == n))
            }
        };
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let ready = match self.describe(&request.get_ref().name).await {
            Ok(view) => view.unavailable().is_none(),
            Err(s) if s.code() == tonic::Code::NotFound => false,
            Err(s) => return Err(s),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "gpuslice".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let view = self.describe(&request.get_ref().name).await?;
        let io = &view.source.io;
        Ok(Response::new(ModelMetadataResponse {
            name: view.name,
            versions: vec!["1".into()],
            platform: if view.source.program.ends_with(".pt2") {
                "pytorch_export".into()
            } else {
                "pytorch_libtorch".into()
            },
            inputs: io.inputs.iter().map(metadata).collect(),
            outputs: io.outputs.iter().map(metadata).collect(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let mut request = request.into_inner();
        let view = self.describe(&request.model_name).await?;
        let (input, output) = (view.source.io.input().clone(), view.source.io.output().clone());
        if let Some(unknown) = request.outputs.iter().find(|o| o.name != output.name) {
            return Err(Status::invalid_argument(format!(
                "model {} has no output {:?}; its output is {:?}",
                view.name, unknown.name, output.name
            )));
        }
        let rows = rows(&mut request, &input)?;
        let n = rows.len();
        let answers = try_join_all(rows.into_iter().map(|row| {
            let name = view.name.clone();
            self.live.ask(move |reply| Command::Infer(name, Some(row.into()), reply))
        }))
        .await?;
        let mut data = Vec::with_capacity(n * output.bytes());
        for done in answers {
            let Some(row) = done.computed.map(|c| c.output) else {
                return Err(LiveError::FailedPrecondition(
                    "this node's backend computes no outputs (the simulator); serve with --backend gpu".into(),
                )
                .into());
            };
            data.extend_from_slice(&row);
        }
        Ok(Response::new(ModelInferResponse {
            model_name: view.name,
            model_version: "1".into(),
            id: request.id,
            parameters: Default::default(),
            outputs: vec![InferOutputTensor {
                name: output.name.clone(),
                datatype: output.datatype.name().into(),
                shape: batched(n as i64, &output.dims),
                parameters: Default::default(),
                contents: None,
            }],
            raw_output_contents: vec![data.into()],
        }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let names = self.repository()?.names().map_err(|e| Status::internal(e.to_string()))?;
        let (views, _) = self.live.ask(Command::List).await?;
        let models = names
            .into_iter()
            .map(|name| {
                let (state, reason) = match views.iter().find(|v| v.name == name).map(|v| (v, v.unavailable())) {
                    Some((_, Some(why))) => ("UNAVAILABLE", why.to_string()),
                    Some((_, None)) => ("READY", String::new()),
                    None => ("UNAVAILABLE", String::new()),
                };
                ModelIndex { name, version: "1".into(), state: state.into(), reason }
            })
            .filter(|m| !request.get_ref().ready || m.state == "READY")
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    /// Registers the repository model (its workers start: seconds); answers once it serves.
    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let repository = self.repository()?.clone();
        let name = request.into_inner().model_name;
        let spec = tokio::task::spawn_blocking(move || repository.spec(&name))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let spec = spec
            .map_err(|e| if e.starts_with("no model") { Status::not_found(e) } else { Status::invalid_argument(e) })?;
        self.live.ask(|reply| Command::Register(spec, reply)).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    /// Unregisters the model once the requests it accepted are answered.
    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let name = request.into_inner().model_name;
        self.live.ask(|reply| Command::Unregister(name, reply)).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TensorSpec {
        TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![2] }
    }

    fn request(name: &str, datatype: &str, shape: Vec<i64>, raw: Vec<Bytes>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    /// A hostile name, datatype or shape is refused naming what was wrong, quoted short: the
    /// error stays far under a client's metadata limit (gRPC's default: 8 KiB).
    #[test]
    fn huge_names_datatypes_and_shapes_are_quoted_short() {
        let huge = "n".repeat(1 << 20);
        let row = || vec![Bytes::from(vec![0u8; 8])];
        let cases = [
            request(&huge, "FP32", vec![1, 2], row()),
            request("x", &huge, vec![1, 2], row()),
            request("x", "FP32", vec![1; 10_000], row()),
        ];
        for (mut case, what) in cases.into_iter().zip(["no input", "datatype", "shape"]) {
            let status = rows(&mut case, &spec()).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(what) && status.message().len() < 400,
                "{}",
                &status.message()[..400.min(status.message().len())]
            );
        }
    }

    #[test]
    fn a_second_raw_buffer_or_raw_beside_typed_contents_is_refused() {
        let row = || Bytes::from(vec![0u8; 8]);
        let mut two = request("x", "FP32", vec![1, 2], vec![row(), row()]);
        assert!(rows(&mut two, &spec()).unwrap_err().message().contains("2 raw_input_contents"));
        let mut both = request("x", "FP32", vec![1, 2], vec![row()]);
        both.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![1.0, 2.0], ..Default::default() });
        assert!(rows(&mut both, &spec()).unwrap_err().message().contains("beside typed contents"));
        let mut one = request("x", "FP32", vec![1, 2], vec![row()]);
        assert_eq!(rows(&mut one, &spec()).unwrap().len(), 1);
    }
}
