// Shared by the targets: the runtime catches panics inside tract (a bad model is an
// error, not a crash), but libfuzzer-sys' panic hook aborts on every panic, caught or
// not. Put the default hook back, so only panics that escape our code are findings
// (libfuzzer-sys aborts on those itself).
pub fn keep_caught_panics_caught() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
}
