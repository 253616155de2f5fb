//! [`CudaDevice`]: one GPU as a [`KernelDevice`], so `KernelBackend<CudaDevice>` (the
//! [`CudaBackend`]) is the CUDA backend: buffers are [`CudaBuf`]s on the runtime's one stream,
//! a launch looks the kernel up in the embedded fatbin (cached by name) and pushes each
//! checked argument (device pointers at their element offsets, scalars by value) with
//! cudarc's launch builder, and GEMMs go to cuBLASLt with the deterministic settings of
//! gemm.rs. All op logic (checks, grids, kernel choice) is in backend/kernel, shared with the
//! emulator device that CI runs. Neighbours: runtime.rs, gemm.rs, ../kernel/mod.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::gemm::Gemm;
use super::runtime::{CudaBuf, CudaRuntime};
use crate::backend::kernel::{Elem, GemmShape, KArg, KernelBackend, KernelDevice, Launch};
use crate::error::Result;

/// The CUDA backend: the kernel backend on a GPU.
pub type CudaBackend = KernelBackend<CudaDevice>;

/// One GPU: its runtime (context, stream, kernel module), cuBLASLt handle and the kernels
/// looked up so far. Clones share all three.
#[derive(Clone)]
pub struct CudaDevice {
    rt: Arc<CudaRuntime>,
    gemm: Arc<Gemm>,
    functions: Arc<Mutex<HashMap<String, CudaFunction>>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({:?})", self.rt)
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal` (runtime and cuBLASLt); errors (never panics) naming what is
    /// missing when there is no usable GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        let rt = CudaRuntime::new(ordinal)?;
        let gemm = Gemm::new(&rt)?;
        Ok(CudaDevice {
            rt: Arc::new(rt),
            gemm: Arc::new(gemm),
            functions: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The runtime (context, stream, module).
    pub fn runtime(&self) -> &CudaRuntime {
        &self.rt
    }

    /// The cuBLASLt GEMMs.
    pub fn gemm_handle(&self) -> &Gemm {
        &self.gemm
    }

    fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut f = self
            .functions
            .lock()
            .map_err(|_| self.rt.error("kernel lookup", "function cache poisoned"))?;
        if let Some(k) = f.get(name) {
            return Ok(k.clone());
        }
        let k = self.rt.function(name)?;
        f.insert(name.to_string(), k.clone());
        Ok(k)
    }
}

impl CudaBackend {
    /// The CUDA backend on GPU `ordinal`.
    pub fn on_gpu(ordinal: usize) -> Result<Self> {
        Ok(KernelBackend::new(CudaDevice::new(ordinal)?))
    }
}

/// One kernel argument as the launch builder takes it.
enum Word {
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
    U64(u64),
    Usize(usize),
}

fn base_ptr(b: &CudaBuf, rt: &CudaRuntime) -> u64 {
    let s = &**rt.stream();
    match b {
        CudaBuf::F32(x) => x.device_ptr(s).0,
        CudaBuf::Bf16(x) => x.device_ptr(s).0,
        CudaBuf::I32(x) => x.device_ptr(s).0,
        CudaBuf::F64(x) => x.device_ptr(s).0,
    }
}

fn base_ptr_mut(b: &mut CudaBuf, rt: &CudaRuntime) -> u64 {
    let s = &**rt.stream();
    match b {
        CudaBuf::F32(x) => x.device_ptr_mut(s).0,
        CudaBuf::Bf16(x) => x.device_ptr_mut(s).0,
        CudaBuf::I32(x) => x.device_ptr_mut(s).0,
        CudaBuf::F64(x) => x.device_ptr_mut(s).0,
    }
}

impl KernelDevice for CudaDevice {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        self.rt.label().to_string()
    }

    fn alloc(&self, elem: Elem, len: usize) -> Result<CudaBuf> {
        self.rt.alloc_elem(elem, len)
    }

    fn memory_in_use(&self) -> Option<u64> {
        self.rt.memory_in_use().ok()
    }

    fn upload_f32(&self, data: &[f32]) -> Result<CudaBuf> {
        self.rt.upload_f32(data)
    }

    fn upload_bf16(&self, data: &[bf16]) -> Result<CudaBuf> {
        self.rt.upload_bf16(data)
    }

    fn upload_i32(&self, data: &[i32]) -> Result<CudaBuf> {
        self.rt.upload_i32(data)
    }

    fn download_f32(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.rt.download_f32(buf)
    }

    fn download_f64(&self, buf: &CudaBuf) -> Result<Vec<f64>> {
        self.rt.download_f64(buf)
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }

    fn elem(&self, buf: &CudaBuf) -> Elem {
        buf.elem()
    }

    unsafe fn launch(
        &self,
        name: &str,
        cfg: &Launch,
        args: &mut [KArg<'_, CudaBuf>],
    ) -> Result<()> {
        let f = self.function(name)?;
        // Device pointers at their offsets and scalars, in parameter order; the runtime has
        // event tracking off (one stream), so raw pointers need no read/write events.
        let words: Vec<Word> = args
            .iter_mut()
            .map(|a| match a {
                KArg::Mut(b, off) => {
                    let size = b.elem().size() as u64;
                    Word::Ptr(base_ptr_mut(b, &self.rt) + *off as u64 * size)
                }
                KArg::Ref(b, off) => {
                    Word::Ptr(base_ptr(b, &self.rt) + *off as u64 * b.elem().size() as u64)
                }
                KArg::I32(v) => Word::I32(*v),
                KArg::U32(v) => Word::U32(*v),
                KArg::F32(v) => Word::F32(*v),
                KArg::U64(v) => Word::U64(*v),
                KArg::Usize(v) => Word::Usize(*v),
            })
            .collect();
        let mut b = self.rt.stream().launch_builder(&f);
        for w in &words {
            match w {
                Word::Ptr(p) => b.arg(p),
                Word::I32(v) => b.arg(v),
                Word::U32(v) => b.arg(v),
                Word::F32(v) => b.arg(v),
                Word::U64(v) => b.arg(v),
                Word::Usize(v) => b.arg(v),
            };
        }
        let lc = LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.smem,
        };
        // SAFETY: the arguments were checked against the kernel's parameter list (count,
        // kinds, element types: a device pointer is a u64 like `T*`, the scalars have the C
        // types' sizes), and the caller guarantees the buffers are long enough for the launch.
        let r = unsafe { b.launch(lc) };
        self.rt.driver(r, || {
            format!(
                "launch {name} grid {:?} block {:?} smem {}",
                cfg.grid, cfg.block, cfg.smem
            )
        })?;
        Ok(())
    }

    fn gemm(
        &self,
        c: (&mut CudaBuf, usize),
        a: (&CudaBuf, usize),
        b: (&CudaBuf, usize),
        shape: GemmShape,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.gemm.matmul_at(c, a, b, shape, alpha, beta)
    }
}
