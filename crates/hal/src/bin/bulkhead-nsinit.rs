//! `bulkhead-nsinit CONFIG_JSON`: builds one `ns` qube from the inside. Only
//! `bulkheadd` (through `bulkhead-hal`) runs it; see `ns::init`.
#![forbid(unsafe_code)]

fn main() {
    let Some(arg) = std::env::args().nth(1) else {
        eprintln!("bulkhead-nsinit: run by bulkheadd only (missing configuration)");
        std::process::exit(2);
    };
    let cfg: bulkhead_hal::ns::init::InitConfig = match serde_json::from_str(&arg) {
        Ok(c) => c,
        Err(e) => {
            println!("error bad configuration: {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(bulkhead_hal::ns::init::run(&cfg));
}
