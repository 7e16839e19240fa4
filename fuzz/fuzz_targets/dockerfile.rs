//! Dockerfile and .dockerignore parsing: any text parses or is refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = berth_build::dockerfile::parse(s);
    let _ = berth_build::dockerignore::DockerIgnore::parse(s);
});
