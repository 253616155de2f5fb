//! GPU detection that never panics: can the CUDA libraries be loaded, does the driver support
//! CUDA 13.0, does GPU N exist, is it sm_80 or newer. cudarc (built with `dynamic-loading`)
//! panics when a library or a symbol is missing, so every library is first opened here with
//! `dlopen` (through `libc`), and every cudarc call is then wrapped in `catch_unwind`.
//!
//! Reasons are returned as clauses ("libcuda.so.1 was not found (...)") that
//! `backend::device::resolve` puts into its fallback log line and `runtime::CudaRuntime::new`
//! into its error. Neighbours: runtime.rs (uses [`open_device`]), ../device.rs.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, DriverError};

/// The CUDA driver library (installed with the NVIDIA driver).
pub const DRIVER_LIB: &str = "libcuda.so.1";
/// cuBLASLt of CUDA 13 (the GEMMs of the CUDA backend).
pub const CUBLASLT_LIB: &str = "libcublasLt.so.13";
/// The oldest driver API version that can load the fatbin (built with nvcc 13.0): 13.0.
pub const MIN_DRIVER_VERSION: i32 = 13000;
/// The oldest compute capability the fatbin has code for (sm_80 SASS, compute_80 PTX).
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// What was found about one GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// The driver's ordinal (`N` of `cuda:N`).
    pub ordinal: usize,
    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0).
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_mem: usize,
    /// The driver's CUDA API version, e.g. 13000 for 13.0.
    pub driver_version: i32,
    /// Number of GPUs the driver sees.
    pub device_count: usize,
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ma, mi) = self.compute_capability;
        write!(
            f,
            "cuda:{} {} (sm_{ma}{mi}, {:.1} GiB, driver CUDA {}.{})",
            self.ordinal,
            self.name,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10
        )
    }
}

/// `Ok` when the shared library `name` can be loaded with `dlopen`, else why not.
pub fn check_library(name: &str) -> Result<(), String> {
    let cname = CString::new(name).map_err(|_| format!("bad library name {name:?}"))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; dlopen only
    // maps the library (running its initialisers, as cudarc's own dlopen will) and the
    // handle is closed below, exactly once, when it is not null. dlerror returns a
    // thread-local NUL-terminated string (or null), copied before any other dl* call.
    unsafe {
        let handle = libc::dlopen(cname.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let why = if err.is_null() {
                "no reason given".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(format!("{name} was not found (dlopen: {why})"));
        }
        libc::dlclose(handle);
    }
    Ok(())
}

/// A driver error as "CUDA_ERROR_NAME (the driver's text)".
pub fn driver_error_text(e: &DriverError) -> String {
    let name = format!("{:?}", e.0);
    match catch_unwind(|| e.error_string().map(|s| s.to_string_lossy().into_owned())) {
        Ok(Ok(text)) => format!("{name} ({text})"),
        _ => name,
    }
}

/// Runs a cudarc call, turning both its error and a panic (missing library or symbol) into a
/// reason naming `what`.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what} failed: {}", driver_error_text(&e))),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(format!("{what} failed inside cudarc: {msg}"))
        }
    }
}

/// Opens GPU `ordinal`: checks libcuda.so.1, initialises the driver, checks its version, the
/// device count and the compute capability, and returns the (primary) context.
///
/// Does not need cuBLASLt; [`probe`] also checks that.
pub fn open_device(ordinal: usize) -> Result<(Arc<CudaContext>, GpuInfo), String> {
    check_library(DRIVER_LIB)?;
    guarded("cuInit", cudarc::driver::result::init)?;
    let driver_version = guarded("cuDriverGetVersion", || {
        let mut v = 0i32;
        // SAFETY: `v` is a valid, writable i32 for the duration of the call.
        unsafe { sys::cuDriverGetVersion(&mut v).result()? };
        Ok(v)
    })?;
    if driver_version < MIN_DRIVER_VERSION {
        return Err(format!(
            "the NVIDIA driver supports CUDA {}.{} only; the kernels were built with CUDA 13.0 \
             and need a driver for CUDA 13.0 or newer",
            driver_version / 1000,
            (driver_version % 1000) / 10
        ));
    }
    let count = guarded("cuDeviceGetCount", CudaContext::device_count)?;
    let device_count = usize::try_from(count).unwrap_or(0);
    if device_count == 0 {
        return Err("the driver found no CUDA device".to_string());
    }
    if ordinal >= device_count {
        return Err(format!(
            "only {device_count} CUDA device(s) present (cuda:0 to cuda:{})",
            device_count - 1
        ));
    }
    let ctx = guarded("creating the context", || CudaContext::new(ordinal))?;
    let name = guarded("cuDeviceGetName", || ctx.name())?;
    let compute_capability = guarded("reading the compute capability", || {
        ctx.compute_capability()
    })?;
    let total_mem = guarded("cuDeviceTotalMem", || ctx.total_mem())?;
    if compute_capability < MIN_COMPUTE_CAPABILITY {
        let (ma, mi) = compute_capability;
        return Err(format!(
            "{name} has compute capability {ma}.{mi}; the kernels need 8.0 or newer \
             (the fatbin holds sm_80/sm_90 code and compute_80 PTX)"
        ));
    }
    let info = GpuInfo {
        ordinal,
        name,
        compute_capability,
        total_mem,
        driver_version,
        device_count,
    };
    Ok((ctx, info))
}

/// Everything the CUDA backend needs on GPU `ordinal`: [`open_device`] plus cuBLASLt.
pub fn probe(ordinal: usize) -> Result<GpuInfo, String> {
    let (_ctx, info) = open_device(ordinal)?;
    check_library(CUBLASLT_LIB)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_named() {
        let err = check_library("libgradients-no-such-lib.so.7").unwrap_err();
        assert!(err.starts_with("libgradients-no-such-lib.so.7 was not found (dlopen: "));
        // A library every Linux process has loads.
        check_library("libc.so.6").unwrap();
    }

    #[test]
    fn guarded_turns_panics_into_reasons() {
        let r: Result<(), String> = guarded("loading", || panic!("symbol cuFoo missing"));
        assert_eq!(
            r.unwrap_err(),
            "loading failed inside cudarc: symbol cuFoo missing"
        );
        assert_eq!(guarded("ok", || Ok(3)), Ok(3));
    }
}
