/*!
A minimal binding to NVRTC, loaded at run time with `dlopen`, used to compile the kernels in
`kernels/` to PTX.

Why not `cudarc::nvrtc::compile_ptx_with_opts`: cudarc 0.19 built with its `cuda-12080` feature
searches only `libnvrtc.so`, `libnvrtc.so.12`, `.11`, `.10`, `.9` and `.1` (plus Windows-style
names; see `cudarc::get_lib_name_candidates`), while the GPU machines' only NVRTC is CUDA 13's
`libnvrtc.so.13` (PyTorch venv, `nvidia/cu13/lib`); cudarc would not find it, and panics where it
does not. This binding also keeps the compiler log on success (warnings fail the CI compile check),
passes the kernel headers in memory (no files needed next to a carried binary), and reports a
missing library as an error.

Search order (first that loads wins), see `Nvrtc::load`:
1. `$MARL_NVRTC_LIB`, a path to a `libnvrtc.so*` file (an error if set and not loadable);
2. the names `libnvrtc.so`, `libnvrtc.so.13`, `libnvrtc.so.12`, `libnvrtc.so.11` through the
   dynamic loader (`LD_LIBRARY_PATH`, the ld cache);
3. well-known directories: the PyTorch venv of the GPU machines
   (`/opt/torch/.venv/lib/python3.N/site-packages/nvidia/{cu13,cuda_nvrtc}/lib`), `$VIRTUAL_ENV`,
   `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`.

NVRTC opens its `libnvrtc-builtins.so.X.Y` by name at compile time. CUDA 12's pip build finds it
next to itself (RUNPATH `$ORIGIN`), CUDA 13's has no RUNPATH and needs it on the loader's path;
so when NVRTC is loaded from a file path, the builtins library of the same directory is loaded
first (`RTLD_GLOBAL`), which satisfies NVRTC's later `dlopen` by soname.
*/

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

type NvrtcResult = c_int;
type Program = *mut c_void;

unsafe extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}
const RTLD_NOW: c_int = 2;
const RTLD_LOCAL: c_int = 0;
const RTLD_GLOBAL: c_int = 0x100;

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult;
type ErrorStringFn = unsafe extern "C" fn(NvrtcResult) -> *const c_char;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> NvrtcResult;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> NvrtcResult;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult;
type TextFn = unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> NvrtcResult;

/// The NVRTC entry points we use.
pub struct Nvrtc {
    /// Where the library was found.
    pub origin: String,
    version: VersionFn,
    get_error_string: ErrorStringFn,
    create_program: CreateFn,
    compile_program: CompileFn,
    get_program_log_size: SizeFn,
    get_program_log: TextFn,
    get_ptx_size: SizeFn,
    get_ptx: TextFn,
    destroy_program: DestroyFn,
}

// SAFETY: the struct holds plain function pointers into a library that is never unloaded; NVRTC's
// API is thread safe for distinct programs.
unsafe impl Send for Nvrtc {}
unsafe impl Sync for Nvrtc {}

/// Output of one compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The PTX.
    pub ptx: String,
    /// The compiler log (warnings); empty when clean.
    pub log: String,
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated thread-local string.
    unsafe {
        let e = dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

fn try_open(name: &str) -> std::result::Result<*mut c_void, String> {
    if name.contains('/') {
        preload_builtins(name);
    }
    open_with(name, RTLD_NOW | RTLD_LOCAL)
}

fn open_with(name: &str, flags: c_int) -> std::result::Result<*mut c_void, String> {
    let c = CString::new(name).map_err(|_| format!("{name}: contains a NUL byte"))?;
    // SAFETY: c is a valid C string; dlopen has no other preconditions.
    let h = unsafe { dlopen(c.as_ptr(), flags) };
    if h.is_null() {
        Err(last_dl_error())
    } else {
        Ok(h)
    }
}

/// Load `libnvrtc-builtins.so.*` (not the `.alt.` variant) from the directory of `lib`, if present,
/// so that NVRTC's own `dlopen` of it by soname succeeds without `LD_LIBRARY_PATH`.
fn preload_builtins(lib: &str) {
    let Some(dir) = std::path::Path::new(lib).parent() else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("libnvrtc-builtins.so") {
            // best effort: a failure surfaces later as NVRTC's own error
            let _ = open_with(&e.path().display().to_string(), RTLD_NOW | RTLD_GLOBAL);
        }
    }
}

/// `dir/*/...` expansion of one `*` path component (enough for `python3*`).
fn glob_one(pattern: &str) -> Vec<PathBuf> {
    let Some(star) = pattern.find('*') else {
        return vec![PathBuf::from(pattern)];
    };
    let (head, tail) = pattern.split_at(star);
    let dir_end = head.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (dir, prefix) = head.split_at(dir_end);
    let rest = &tail[1..];
    let (suffix, after) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(if dir.is_empty() { "." } else { dir }) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            if n.starts_with(prefix)
                && n.ends_with(suffix)
                && n.len() >= prefix.len() + suffix.len()
            {
                out.extend(glob_one(&format!("{dir}{n}{after}")));
            }
        }
    }
    out
}

/// Library files to try after the loader's own search, in order.
fn well_known_files() -> Vec<PathBuf> {
    let mut dirs: Vec<String> = Vec::new();
    for venv in ["/opt/torch/.venv".to_string()]
        .into_iter()
        .chain(std::env::var("VIRTUAL_ENV").ok())
    {
        dirs.push(format!("{venv}/lib/python3*/site-packages/nvidia/cu13/lib"));
        dirs.push(format!(
            "{venv}/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib"
        ));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(h) = std::env::var(var) {
            dirs.push(format!("{h}/lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    let mut files = Vec::new();
    for d in dirs {
        for dir in glob_one(&d) {
            for name in [
                "libnvrtc.so",
                "libnvrtc.so.13",
                "libnvrtc.so.12",
                "libnvrtc.so.11",
            ] {
                let f = dir.join(name);
                if f.is_file() {
                    files.push(f);
                }
            }
        }
    }
    files
}

/// Names tried through the dynamic loader's search path.
pub const LOADER_NAMES: [&str; 4] = [
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "libnvrtc.so.11",
];

impl Nvrtc {
    /// The process-wide NVRTC, loaded on first use (see the module docs for the search order).
    pub fn get() -> std::result::Result<&'static Nvrtc, String> {
        static LIB: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
        LIB.get_or_init(Self::load).as_ref().map_err(|e| e.clone())
    }

    fn load() -> std::result::Result<Nvrtc, String> {
        let mut tried = Vec::new();
        if let Ok(path) = std::env::var("MARL_NVRTC_LIB") {
            return match try_open(&path) {
                Ok(h) => Self::from_handle(h, path),
                Err(e) => Err(format!("MARL_NVRTC_LIB={path} could not be loaded: {e}")),
            };
        }
        for name in LOADER_NAMES {
            match try_open(name) {
                Ok(h) => return Self::from_handle(h, name.to_string()),
                Err(_) => tried.push(name.to_string()),
            }
        }
        for f in well_known_files() {
            let s = f.display().to_string();
            match try_open(&s) {
                Ok(h) => return Self::from_handle(h, s),
                Err(e) => tried.push(format!("{s} ({e})")),
            }
        }
        Err(format!(
            "NVRTC (libnvrtc.so) not found; tried {}. Install it (`pip install nvidia-cuda-nvrtc-cu12`, or use \
             CUDA 13's from the PyTorch venv) and put its lib directory on LD_LIBRARY_PATH, or set \
             MARL_NVRTC_LIB to the library file (docs/gpu.md)",
            tried.join(", ")
        ))
    }

    fn from_handle(h: *mut c_void, origin: String) -> std::result::Result<Nvrtc, String> {
        let sym = |name: &str| -> std::result::Result<*mut c_void, String> {
            let c = CString::new(name).expect("symbol names have no NUL");
            // SAFETY: h is a live handle from dlopen (never closed), c a valid C string.
            let p = unsafe { dlsym(h, c.as_ptr()) };
            if p.is_null() {
                Err(format!(
                    "{origin}: symbol {name} missing ({})",
                    last_dl_error()
                ))
            } else {
                Ok(p)
            }
        };
        // SAFETY: each symbol is the documented NVRTC function of the matching C signature
        // (nvrtc.h, stable since CUDA 7); a non-null data pointer from dlsym is the function's
        // address, and function and data pointers have the same size on every supported target.
        unsafe {
            Ok(Nvrtc {
                version: std::mem::transmute::<*mut c_void, VersionFn>(sym("nvrtcVersion")?),
                get_error_string: std::mem::transmute::<*mut c_void, ErrorStringFn>(sym(
                    "nvrtcGetErrorString",
                )?),
                create_program: std::mem::transmute::<*mut c_void, CreateFn>(sym(
                    "nvrtcCreateProgram",
                )?),
                compile_program: std::mem::transmute::<*mut c_void, CompileFn>(sym(
                    "nvrtcCompileProgram",
                )?),
                get_program_log_size: std::mem::transmute::<*mut c_void, SizeFn>(sym(
                    "nvrtcGetProgramLogSize",
                )?),
                get_program_log: std::mem::transmute::<*mut c_void, TextFn>(sym(
                    "nvrtcGetProgramLog",
                )?),
                get_ptx_size: std::mem::transmute::<*mut c_void, SizeFn>(sym("nvrtcGetPTXSize")?),
                get_ptx: std::mem::transmute::<*mut c_void, TextFn>(sym("nvrtcGetPTX")?),
                destroy_program: std::mem::transmute::<*mut c_void, DestroyFn>(sym(
                    "nvrtcDestroyProgram",
                )?),
                origin,
            })
        }
    }

    /// NVRTC's `(major, minor)` version.
    pub fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { (self.version)(&mut a, &mut b) };
        (a, b)
    }

    fn err(&self, what: &str, r: NvrtcResult) -> String {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        let s = unsafe { CStr::from_ptr((self.get_error_string)(r)) }.to_string_lossy();
        format!("{what}: {s} ({r})")
    }

    /// Compile `src` (named `name` in messages) with in-memory `headers` (`(include name, text)`)
    /// and `options`. On failure the error carries the compiler log.
    pub fn compile(
        &self,
        name: &str,
        src: &str,
        headers: &[(&str, &str)],
        options: &[String],
    ) -> std::result::Result<Compiled, String> {
        let c_src = CString::new(src).map_err(|_| format!("{name}: source contains NUL"))?;
        let c_name = CString::new(name).map_err(|_| "name contains NUL".to_string())?;
        let h_names: Vec<CString> = headers
            .iter()
            .map(|(n, _)| CString::new(*n).expect("header name"))
            .collect();
        let h_srcs: Vec<CString> = headers
            .iter()
            .map(|(_, s)| CString::new(*s).expect("header text"))
            .collect();
        let h_name_ptrs: Vec<*const c_char> = h_names.iter().map(|c| c.as_ptr()).collect();
        let h_src_ptrs: Vec<*const c_char> = h_srcs.iter().map(|c| c.as_ptr()).collect();
        let c_opts: Vec<CString> = options
            .iter()
            .map(|o| CString::new(o.as_str()).expect("option"))
            .collect();
        let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live NUL-terminated string owned above; the arrays have
        // the lengths passed.
        let r = unsafe {
            (self.create_program)(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                headers.len() as c_int,
                h_src_ptrs.as_ptr(),
                h_name_ptrs.as_ptr(),
            )
        };
        if r != 0 {
            return Err(self.err(&format!("{name}: nvrtcCreateProgram"), r));
        }
        // SAFETY: prog was created above; the options array outlives the call.
        let rc =
            unsafe { (self.compile_program)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let log = self.program_log(prog);
        let result = if rc != 0 {
            const BUILTIN_OPERATION_FAILURE: NvrtcResult = 7;
            let hint = if rc == BUILTIN_OPERATION_FAILURE {
                "\nhint: NVRTC could not load its libnvrtc-builtins library; put the directory of libnvrtc on \
                 LD_LIBRARY_PATH"
            } else {
                ""
            };
            Err(format!(
                "{}\noptions: {}\nNVRTC log:\n{log}{hint}",
                self.err(&format!("{name}: compile ({})", self.origin), rc),
                options.join(" ")
            ))
        } else {
            self.program_ptx(prog).map(|ptx| Compiled { ptx, log })
        };
        // SAFETY: prog is a valid program, destroyed exactly once.
        unsafe { (self.destroy_program)(&mut prog) };
        result
    }

    fn program_log(&self, prog: Program) -> String {
        let mut n = 0usize;
        // SAFETY: prog is valid; n is a valid out-pointer; the buffer has the size NVRTC reported.
        unsafe {
            if (self.get_program_log_size)(prog, &mut n) != 0 || n == 0 {
                return String::new();
            }
            let mut buf = vec![0u8; n];
            if (self.get_program_log)(prog, buf.as_mut_ptr().cast()) != 0 {
                return String::new();
            }
            CStr::from_bytes_until_nul(&buf)
                .map(|c| c.to_string_lossy().trim().to_string())
                .unwrap_or_default()
        }
    }

    fn program_ptx(&self, prog: Program) -> std::result::Result<String, String> {
        let mut n = 0usize;
        // SAFETY: as in program_log.
        unsafe {
            let r = (self.get_ptx_size)(prog, &mut n);
            if r != 0 {
                return Err(self.err("nvrtcGetPTXSize", r));
            }
            let mut buf = vec![0u8; n.max(1)];
            let r = (self.get_ptx)(prog, buf.as_mut_ptr().cast());
            if r != 0 {
                return Err(self.err("nvrtcGetPTX", r));
            }
            Ok(CStr::from_bytes_until_nul(&buf)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default())
        }
    }
}
