//! Loading an nftables script with libnftables, the library the `nft`
//! command is a thin front end to, inside this process.
//!
//! Running `nft -f -` per sandbox cost an exec and the whole program's
//! start-up: 6.5–8 ms of a ~20 ms `moat run -- true` (docs/performance.md).
//! Here the script goes through the same library, with the same parser and
//! the same netlink batch, from the calling thread, so it lands in that
//! thread's network namespace.
//!
//! The library is opened at run time (`libnftables.so.1`, installed with
//! every nftables package), not linked: Moat builds without its headers, and
//! a system without it gets an error that says what to install instead of a
//! loader failure before `main`. [`preload`] opens it on a background thread
//! while the sandbox starts (`dlopen` of it and its dependencies is the
//! slow part); [`load`] waits for that if it is still going.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::{Mutex, OnceLock};

/// The library's file name (its soname), looked up the way `dlopen` does.
pub const SONAME: &str = "libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The functions of `libnftables.h` Moat calls, resolved once.
struct Lib {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    error_buffer: CtxGetBuffer,
    run_cmd: RunCmd,
    /// Keeps the functions above mapped: never unloaded.
    _lib: libloading::Library,
}

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// libnftables sets up global state on first use (its parser's tables,
/// gmp's allocator hooks): one script at a time in this process.
static RUNNING: Mutex<()> = Mutex::new(());

/// Why a script was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LibNftError {
    #[error(
        "cannot load {SONAME}, the nftables library: {0}. Install nftables \
         (Debian/Ubuntu: apt-get install nftables), or use --network-mode env"
    )]
    Missing(String),

    #[error(
        "nftables rejected the sandbox ruleset: {0}. The kernel needs nf_tables with \
         nat, redirect and reject (modprobe nf_tables nft_redir nft_reject_ipv6), or \
         use --network-mode env"
    )]
    Rejected(String),
}

fn open() -> Result<Lib, String> {
    // SAFETY: libnftables' initialisers only set up its own state.
    let lib = unsafe { libloading::Library::new(SONAME) }.map_err(|e| e.to_string())?;
    Ok(Lib {
        ctx_new: symbol(&lib, b"nft_ctx_new\0")?,
        ctx_free: symbol(&lib, b"nft_ctx_free\0")?,
        buffer_output: symbol(&lib, b"nft_ctx_buffer_output\0")?,
        buffer_error: symbol(&lib, b"nft_ctx_buffer_error\0")?,
        error_buffer: symbol(&lib, b"nft_ctx_get_error_buffer\0")?,
        run_cmd: symbol(&lib, b"nft_run_cmd_from_buffer\0")?,
        _lib: lib,
    })
}

/// The function `name` of `lib`, as the function pointer type `F`.
fn symbol<F: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<F, String> {
    // SAFETY: every `F` used here is the signature libnftables.h declares
    // for `name`; the pointer is used only while `lib` stays loaded (forever).
    unsafe { lib.get::<F>(name) }
        .map(|f| *f)
        .map_err(|e| e.to_string())
}

fn lib() -> Result<&'static Lib, LibNftError> {
    LIB.get_or_init(open)
        .as_ref()
        .map_err(|e| LibNftError::Missing(e.clone()))
}

/// Opens the library on a background thread, so that [`load`] finds it
/// ready. Harmless when it is missing: [`load`] says so.
pub fn preload() {
    let _ = std::thread::Builder::new()
        .name("moat-libnft".into())
        .spawn(|| {
            let _ = lib();
        });
}

/// Whether the library can be opened (for `moat doctor`); if not, the
/// loader's reason.
pub fn available() -> Result<(), String> {
    LIB.get_or_init(open)
        .as_ref()
        .map(drop)
        .map_err(Clone::clone)
}

/// Runs `script` (nft's own syntax, as for `nft -f`) as one transaction in
/// the calling thread's network namespace.
pub fn load(script: &str) -> Result<(), LibNftError> {
    let lib = lib()?;
    let script = CString::new(script)
        .map_err(|_| LibNftError::Rejected("the script contains a NUL byte".into()))?;
    let _one = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: `ctx` is checked non-null, used on this thread only, and freed
    // once; the error buffer it returns is read before it is freed.
    unsafe {
        let ctx = (lib.ctx_new)(0); // NFT_CTX_DEFAULT
        if ctx.is_null() {
            return Err(LibNftError::Rejected("nft_ctx_new failed".into()));
        }
        // Output and errors into buffers, never onto Moat's stdout/stderr.
        (lib.buffer_output)(ctx);
        (lib.buffer_error)(ctx);
        let rc = (lib.run_cmd)(ctx, script.as_ptr());
        let result = if rc == 0 {
            Ok(())
        } else {
            let err = (lib.error_buffer)(ctx);
            let text = if err.is_null() {
                String::new()
            } else {
                CStr::from_ptr(err).to_string_lossy().trim().to_owned()
            };
            Err(LibNftError::Rejected(if text.is_empty() {
                format!("error {rc}")
            } else {
                text
            }))
        };
        (lib.ctx_free)(ctx);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_nftables_cannot_parse_is_refused_with_its_message() {
        // Refused by the parser, before anything reaches the kernel: safe
        // to run in the host namespace, as any user.
        let err = load("table ip moat_test { chain c { this is not a rule } }").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LibNftError::Rejected(_)), "{text}");
        assert!(text.contains("syntax error"), "{text}");
        assert!(text.contains("modprobe"), "{text}");
    }
}
