//! Scenario files against hostile values (a proptest fuzz): every field of a scenario, and of
//! each arrival kind, at and beyond its limits; loading and building it gives an error naming
//! the scenario, never a panic or an allocation the size of the value. `PROPTEST_CASES=100000`
//! runs a longer campaign.

use gpuslice_eval::scenario::LoadedScenario;
use proptest::prelude::*;

/// A TOML number a hostile or mistaken file could hold.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0.001f64..1000.0).prop_map(|v| format!("{v:?}")),
        1 => prop::sample::select(vec![
            "0", "-1", "1e-300", "1e300", "nan", "inf", "-inf", "4294967296", "1e12", "1e-12", "2e10", "1",
        ])
        .prop_map(str::to_string),
    ]
}

fn arrivals() -> impl Strategy<Value = String> {
    prop_oneof![
        number().prop_map(|r| format!("{{ kind = \"poisson\", rate = {r} }}")),
        (number(), number()).prop_map(|(r, cv)| format!("{{ kind = \"gamma\", rate = {r}, cv = {cv} }}")),
        (number(), number(), number()).prop_map(|(t, a, b)| format!("{{ kind = \"steps\", steps = [[0, {a}], [{t}, {b}]] }}")),
        (number(), number(), number(), number()).prop_map(|(m, a, p, s)| {
            format!("{{ kind = \"diurnal\", mean_rate = {m}, amplitude = {a}, period_s = {p}, step_s = {s} }}")
        }),
        (number(), number(), number()).prop_map(|(speedup, scale, start)| {
            format!("{{ kind = \"replay\", trace = \"builtin:azure-llm-code\", speedup = {speedup}, scale = {scale}, start_s = {start} }}")
        }),
        (number(), number()).prop_map(|(scale, minute_s)| {
            format!("{{ kind = \"per-minute-counts\", trace = \"builtin:azure-functions-2019\", functions = [0, 1], scale = {scale}, minute_s = {minute_s} }}")
        }),
    ]
}

fn scenario() -> impl Strategy<Value = String> {
    let top = (number(), number(), number(), number(), 0u64..20);
    let model =
        (number(), number(), prop::sample::select(vec![0u64, 1, 8, 64, 100_000, 4_294_967_295]), number(), arrivals());
    (top, model).prop_map(|((duration, interval, drop, restart, window), (slo, gpu, batch, wait, arrivals))| {
        format!(
            "name = \"fuzz\"\nsharing = \"spatial\"\nduration_s = {duration}\ncontrol_interval_s = {interval}\n\
             drop_after_ms = {drop}\noracle_window_intervals = {window}\n\
             reallocation = {{ kind = \"cold-restart\", restart_s = {restart} }}\n\
             [[models]]\nname = \"resnet50\"\nslo_ms = {slo}\ngpu_pct = {gpu}\nmax_batch = {batch}\n\
             batch_timeout_ms = {wait}\narrivals = {arrivals}\n"
        )
    })
}

proptest! {
    #[test]
    fn hostile_scenarios_are_refused_or_built_never_panic(text in scenario()) {
        match LoadedScenario::from_text(&text, "fuzz.toml", ".".into()).and_then(|s| s.build().map(drop)) {
            Ok(()) => {}
            Err(e) => prop_assert!(format!("{e:#}").contains("fuzz.toml") || format!("{e:#}").contains("models[0]"), "{e:#}"),
        }
    }
}

/// A co-location row: the shipped header, fields hostile or plausible.
fn colocation_rows() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec!["densenet121", "vgg16", "", "a\"b", "resnet50"]);
    let group = prop::sample::select(vec!["densenet121:50:8+vgg16:50:8", "vgg16:100:8", "", "x:y:z", "+"]);
    let row = (group, name, number(), number(), number(), number(), number(), number()).prop_map(
        |(g, m, pct, batch, p50, p99, solo50, solo99)| {
            format!("{g},{m},{pct},{batch},9,{p50},{p99},1,1,{solo50},{solo99}")
        },
    );
    prop::collection::vec(row, 0..12).prop_map(|rows| {
        format!(
            "group,model,gpu_pct,batch,batches,p50_ms,p99_ms,mean_ms,imgs_per_s,solo_p50_ms,solo_p99_ms\n{}",
            rows.join("\n")
        )
    })
}

/// A calibration file: the shipped keys (top level, as `calibrate` writes them), values hostile
/// or plausible.
fn calibration() -> impl Strategy<Value = String> {
    let profiles = prop::sample::select(vec!["builtin:h100-cudagraph", "nothere.csv", "/dev/zero", ""]);
    let values = (number(), number(), number(), number(), number(), number(), number());
    (values, profiles).prop_map(|((i, c, e, t, h, m, l), profile)| {
        format!(
            "profile = \"{profile}\"\ninterference = {i}\nmps_launch_contention = {c}\nmps_share_exponent = {e}\n\
             temporal_switch_ms = {t}\nhand_off_ms = {h}\n\
             [interference_by_model]\nvgg16 = {m}\n[mps_launch_contention_by_model]\nmobilenet_v3_large = {l}\n"
        )
    })
}

proptest! {
    #[test]
    fn hostile_colocation_files_are_refused_or_read_never_panic(text in colocation_rows()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("colocation.csv");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = gpuslice_eval::calibration::read_colocation(path.to_str().unwrap()) {
            prop_assert!(format!("{e:#}").contains("colocation.csv"), "{e:#}");
        }
    }

    #[test]
    fn hostile_calibration_files_are_refused_or_loaded_never_panic(text in calibration()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("calibration.toml"), &text).unwrap();
        match gpuslice_eval::calibration::Calibration::load("calibration.toml", dir.path()) {
            Ok(c) => {
                let k = &c.contention;
                let per_model = k.interference_by_model.values().chain(k.mps_launch_contention_by_model.values());
                let shared = [
                    &k.interference,
                    &k.mps_launch_contention,
                    &k.mps_share_exponent,
                    &k.temporal_switch_ms,
                    &k.hand_off_ms,
                ];
                for v in per_model.chain(shared) {
                    prop_assert!(v.is_finite() && *v >= 0.0, "loaded {v} from {text}");
                }
                let _ = c.profile_set();
            }
            Err(e) => prop_assert!(format!("{e:#}").contains("calibration"), "{e:#}"),
        }
    }
}
