//! `critest-images DIR BIN`: write the OCI image layout of critest's images to DIR (see
//! berth_testkit::cri_images), with the static programs of BIN (`pause`, `nonewprivs`) in them, and print
//! one line per image: `REF_NAME REFERENCE DIGEST`, for the script that pushes them.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, bin] = args.as_slice() else {
        eprintln!("usage: critest-images DIR BIN");
        return ExitCode::from(2);
    };
    match berth_testkit::cri_images::write_layout(dir.as_ref(), bin.as_ref()) {
        Ok(fixtures) => {
            for f in fixtures {
                println!("{} {} {}", f.ref_name, f.reference, f.top.digest);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("critest-images: {e}");
            ExitCode::FAILURE
        }
    }
}
