//! The CUDA runtime under the future CUDA backend: [`CudaRuntime`] holds the context on one
//! GPU, the one stream every op runs on, and the embedded kernel fatbin loaded as a module;
//! [`CudaBuf`] is a device buffer (f32, bf16, i32 or f64 values) with alloc / upload / download.
//! Every failure is an [`Error`] of kind `Device` naming the device, the op and its sizes.
//!
//! One stream and no cross-stream event tracking: work is ordered by the stream, downloads
//! synchronise it. Neighbours: probe.rs (detection, [`open_device`]), launch.rs (typed
//! launchers of the kernels), mod.rs (the fatbin).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError};
use half::bf16;

use super::probe::{driver_error_text, open_device, GpuInfo};
use super::KERNELS_FATBIN;
use crate::backend::kernel::Elem;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// A device buffer of `len` values: f32 or bf16 storage, or the i32 / f64 buffers of kernel
/// metadata and reductions.
#[derive(Debug)]
pub enum CudaBuf {
    /// f32 values.
    F32(CudaSlice<f32>),
    /// bf16 values.
    Bf16(CudaSlice<bf16>),
    /// i32 values (token ids, positions, targets, sample starts).
    I32(CudaSlice<i32>),
    /// f64 values (sum-of-squares partials).
    F64(CudaSlice<f64>),
}

impl CudaBuf {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            CudaBuf::F32(s) => s.len(),
            CudaBuf::Bf16(s) => s.len(),
            CudaBuf::I32(s) => s.len(),
            CudaBuf::F64(s) => s.len(),
        }
    }
    /// True when the buffer holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type.
    pub fn elem(&self) -> Elem {
        match self {
            CudaBuf::F32(_) => Elem::F32,
            CudaBuf::Bf16(_) => Elem::Bf16,
            CudaBuf::I32(_) => Elem::I32,
            CudaBuf::F64(_) => Elem::F64,
        }
    }
}

/// A context on one GPU, its stream and the kernel module. `Send + Sync`; ops bind the
/// context to the calling thread themselves.
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    info: GpuInfo,
    label: String,
}

impl std::fmt::Debug for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaRuntime({})", self.info)
    }
}

impl CudaRuntime {
    /// Opens GPU `ordinal` (see [`open_device`] for the checks), creates the stream and loads
    /// the embedded fatbin. Errors (never panics) naming what is missing when there is no
    /// usable GPU, e.g. "cuda:0: create runtime: libcuda.so.1 was not found (...)".
    pub fn new(ordinal: usize) -> Result<Self> {
        let label = format!("cuda:{ordinal}");
        let (ctx, info) =
            open_device(ordinal).map_err(|why| Error::device(&label, "create runtime", why))?;
        let err = |op: &str| {
            let label = label.clone();
            let op = op.to_string();
            move |e: DriverError| Error::device(label, op, driver_error_text(&e))
        };
        // SAFETY: the engine runs every op of this context on the one stream created below,
        // so buffers need no cross-stream events: work on a stream is ordered, and a buffer
        // is freed (cuMemFreeAsync on the same stream) after the work queued before it.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(err("create stream"))?;
        // cuModuleLoadData wants the image 8-byte aligned: a Vec<u8> from the system
        // allocator is 16-byte aligned on the targets we build for; check rather than trust.
        let image = KERNELS_FATBIN.to_vec();
        if !image.as_ptr().cast::<u64>().is_aligned() {
            return Err(Error::device(
                &label,
                "load kernel fatbin",
                "the copied fatbin is not 8-byte aligned",
            ));
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(err(&format!(
                "load kernel fatbin ({} bytes, sm_80/sm_90 SASS + compute_80 PTX)",
                KERNELS_FATBIN.len()
            )))?;
        Ok(CudaRuntime {
            ctx,
            stream,
            module,
            info,
            label,
        })
    }

    /// What was found about the GPU (name, compute capability, memory, driver version).
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }
    /// "cuda:N", for logs and errors.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every op runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The module loaded from [`KERNELS_FATBIN`].
    pub fn module(&self) -> &Arc<CudaModule> {
        &self.module
    }

    /// An engine error on this device for `op`.
    pub(crate) fn error(&self, op: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::device(&self.label, op, msg)
    }
    /// Maps a driver error of `op` (a closure so the op string is built only on failure).
    pub(crate) fn driver<T>(
        &self,
        r: std::result::Result<T, DriverError>,
        op: impl FnOnce() -> String,
    ) -> Result<T> {
        r.map_err(|e| self.error(op(), driver_error_text(&e)))
    }

    /// The kernel `name` of the fatbin; errors naming it when it is missing.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module.load_function(name).map_err(|e| {
            self.error(
                format!("look up kernel `{name}`"),
                format!(
                    "not in the embedded fatbin (kernels/*.cu): {}",
                    driver_error_text(&e)
                ),
            )
        })
    }

    /// Bytes of the GPU's memory in use by every process (`total − free` from the driver,
    /// this context's own overhead and cuBLASLt's workspace included).
    pub fn memory_in_use(&self) -> Result<u64> {
        let (free, total) =
            self.driver(self.ctx.mem_get_info(), || "query memory info".to_string())?;
        Ok(total.saturating_sub(free) as u64)
    }

    /// Waits until all work queued on the stream is done (and reports its errors).
    pub fn synchronize(&self) -> Result<()> {
        self.driver(self.stream.synchronize(), || "synchronize".to_string())
    }

    /// A zero-filled buffer of `len` values of `dtype` (F32 or BF16).
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        match dtype {
            DType::F32 => self.alloc_elem(Elem::F32, len),
            DType::BF16 => self.alloc_elem(Elem::Bf16, len),
            DType::F16 => {
                Err(self.error(format!("alloc {len} F16"), "f16 buffers are not supported"))
            }
        }
    }

    /// A zero-filled buffer of `len` values of `elem`.
    pub fn alloc_elem(&self, elem: Elem, len: usize) -> Result<CudaBuf> {
        let op = || format!("alloc {len} {elem:?} ({} bytes)", len * elem.size());
        Ok(match elem {
            Elem::F32 => CudaBuf::F32(self.driver(self.zeros(len), op)?),
            Elem::Bf16 => CudaBuf::Bf16(self.driver(self.zeros(len), op)?),
            Elem::I32 => CudaBuf::I32(self.driver(self.zeros(len), op)?),
            Elem::F64 => CudaBuf::F64(self.driver(self.zeros(len), op)?),
        })
    }

    /// A new i32 buffer holding `data`.
    pub fn upload_i32(&self, data: &[i32]) -> Result<CudaBuf> {
        let mut s = self.driver(self.zeros(data.len()), || {
            format!("upload {} i32", data.len())
        })?;
        if !data.is_empty() {
            let r = self.stream.memcpy_htod(data, &mut s);
            self.driver(r, || format!("upload {} i32", data.len()))?;
        }
        Ok(CudaBuf::I32(s))
    }

    /// The values of an f64 buffer; waits for the stream.
    pub fn download_f64(&self, buf: &CudaBuf) -> Result<Vec<f64>> {
        match buf {
            CudaBuf::F64(s) if s.is_empty() => Ok(Vec::new()),
            CudaBuf::F64(s) => self.driver(self.stream.clone_dtoh(s), || {
                format!("download {} f64", s.len())
            }),
            b => Err(self.error(
                format!("download {} f64", b.len()),
                format!("the buffer holds {:?} values", b.elem()),
            )),
        }
    }

    fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> std::result::Result<CudaSlice<T>, DriverError> {
        if len == 0 {
            self.stream.null()
        } else {
            self.stream.alloc_zeros(len)
        }
    }

    /// A new f32 buffer holding `data`.
    pub fn upload_f32(&self, data: &[f32]) -> Result<CudaBuf> {
        let mut s = self.driver(self.zeros(data.len()), || {
            format!("upload {} f32", data.len())
        })?;
        if !data.is_empty() {
            let r = self.stream.memcpy_htod(data, &mut s);
            self.driver(r, || format!("upload {} f32", data.len()))?;
        }
        Ok(CudaBuf::F32(s))
    }

    /// A new bf16 buffer holding `data`.
    pub fn upload_bf16(&self, data: &[bf16]) -> Result<CudaBuf> {
        let mut s = self.driver(self.zeros(data.len()), || {
            format!("upload {} bf16", data.len())
        })?;
        if !data.is_empty() {
            let r = self.stream.memcpy_htod(data, &mut s);
            self.driver(r, || format!("upload {} bf16", data.len()))?;
        }
        Ok(CudaBuf::Bf16(s))
    }

    /// A new buffer of `dtype` holding `data` (rounded to nearest even on the host for bf16).
    pub fn upload(&self, dtype: DType, data: &[f32]) -> Result<CudaBuf> {
        match dtype {
            DType::F32 => self.upload_f32(data),
            DType::BF16 => {
                let h: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
                self.upload_bf16(&h)
            }
            DType::F16 => Err(self.error(
                format!("upload {} f16", data.len()),
                "f16 buffers are not supported",
            )),
        }
    }

    /// The buffer's values as f32 (bf16 widened exactly); waits for the stream.
    pub fn download_f32(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        match buf {
            CudaBuf::F32(s) if s.is_empty() => Ok(Vec::new()),
            CudaBuf::F32(s) => self.driver(self.stream.clone_dtoh(s), || {
                format!("download {} f32", s.len())
            }),
            CudaBuf::Bf16(_) => Ok(self
                .download_bf16(buf)?
                .into_iter()
                .map(f32::from)
                .collect()),
            b => Err(self.error(
                format!("download {} f32", b.len()),
                format!("the buffer holds {:?} values", b.elem()),
            )),
        }
    }

    /// The values of a bf16 buffer; waits for the stream. Errors on an f32 buffer.
    pub fn download_bf16(&self, buf: &CudaBuf) -> Result<Vec<bf16>> {
        match buf {
            CudaBuf::Bf16(s) if s.is_empty() => Ok(Vec::new()),
            CudaBuf::Bf16(s) => self.driver(self.stream.clone_dtoh(s), || {
                format!("download {} bf16", s.len())
            }),
            b => Err(self.error(
                format!("download {} bf16", b.len()),
                format!("the buffer holds {:?} values (use download_f32)", b.elem()),
            )),
        }
    }
}
