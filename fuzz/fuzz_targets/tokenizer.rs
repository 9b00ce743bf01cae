//! `tokenizer.json` loading, then encoding and decoding a little text with it. The
//! `tokenizers` library panics on some malformed files and `Tokenizer::from_dir`
//! catches that; libFuzzer's panic hook would abort even on a caught panic, so this
//! target hands panics back to unwinding (an uncaught one still aborts the run).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moec_runtime::generate::Tokenizer;

static QUIET_PANICS: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET_PANICS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let dir = std::env::temp_dir().join(format!("moec-fuzz-tok-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("tokenizer.json"), data).is_err()
    {
        return;
    }
    if let Ok(t) = Tokenizer::from_dir(&dir) {
        let _ = t.encode("Mixture of experts, 1 2 3 é ✓");
        let _ = t.decode(&[0, 1, 2, 3, -1, i32::MAX]);
    }
});
