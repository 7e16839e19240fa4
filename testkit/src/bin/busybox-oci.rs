//! `busybox-oci DIR NAME [APPLET…]`: write the busybox OCI image archive to DIR/busybox.oci.tar,
//! named NAME, with APPLET symlinks beside the default ones (for scripts/demo.sh). Prints the path.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, name, extra @ ..] = args.as_slice() else {
        eprintln!("usage: busybox-oci DIR NAME [APPLET...]");
        return ExitCode::from(2);
    };
    let mut applets: Vec<&str> = berth_testkit::image::DEFAULT_APPLETS.to_vec();
    applets.extend(extra.iter().map(String::as_str));
    match berth_testkit::image::busybox_oci_archive_with(dir.as_ref(), name, &applets) {
        Ok(archive) => {
            println!("{}", archive.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("busybox-oci: {e}");
            ExitCode::FAILURE
        }
    }
}
