//! `sidekey-demo` keeps working: its whole flow runs to the end on its own stack, and
//! it checks itself that its narration shows no secret value.

#[test]
fn demo_runs_every_step_and_prints_no_secret() {
    assert!(sidekey_tests::is_root(), "the demo needs root");
    let mut out = Vec::new();
    let result = sidekey_tests::demo::run(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(result.is_ok(), "{}\n{text}", result.unwrap_err());
    assert!(text.contains("demo finished: every step passed"), "{text}");
    assert!(text.contains("still valid in OpenBao: false"), "{text}");
}
