//! Every parser of an on-disk format against hostile contents (a proptest fuzz: random rows of
//! numbers at and beyond their limits, random bytes): an error naming the input, never a panic.
//! `cargo test -p gpuslice-traces --test hostile_files` runs 256 cases per format;
//! `PROPTEST_CASES=100000` runs a longer campaign.

use gpuslice_traces::azure::{FunctionCounts, read_timestamps};
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use proptest::prelude::*;

/// Field values a hostile or broken file holds.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e-300".to_string()),
        Just("1e300".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("4294967295".to_string()),
        Just("18446744073709551616".to_string()),
        Just("resnet50".to_string()),
        (-1e6f64..1e6).prop_map(|v| v.to_string()),
        (0u32..200).prop_map(|v| v.to_string()),
        "[ -~]{0,12}",
    ]
}

/// `header` then up to 40 rows of 0 to `columns + 2` random fields.
fn csv(header: &'static str, columns: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(field(), 0..columns + 2), 0..40).prop_map(move |rows| {
        let body: Vec<String> = rows.iter().map(|r| r.join(",")).collect();
        format!("{header}\n{}", body.join("\n"))
    })
}

fn source(text: String) -> Source {
    Source { name: "fuzz.csv".into(), text: text.into() }
}

/// Latencies and GPU% a broken measurement could hold, parseable.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => (0.1f64..100.0).prop_map(|v| v.to_string()),
        1 => prop::sample::select(vec!["1e-300", "1e300", "0", "-1", "nan", "inf", "100", "1e-9", "5e-324"]).prop_map(str::to_string),
    ]
}

/// Profile rows that mostly parse: a grid with some hostile measurements in it.
fn profile_rows() -> impl Strategy<Value = String> {
    let row = (
        prop::sample::select(vec!["resnet50", "vgg16"]),
        number(),
        prop::sample::select(vec![1u32, 2, 4, 8, 0, 4096]),
        number(),
        number(),
        number(),
    )
        .prop_map(|(model, gpu, batch, p50, p99, mean)| {
            format!("e,{model},fp16,{gpu},132,{batch},{p50},{p99},{mean},1")
        });
    prop::collection::vec(row, 1..60).prop_map(|rows| {
        format!("engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s\n{}", rows.join("\n"))
    })
}

proptest! {
    #[test]
    fn fits_of_hostile_measurements_never_panic(text in profile_rows()) {
        if let Ok(set) = ProfileSet::parse(&source(text)) {
            let _ = LatencyModel::fit_all(&set);
        }
    }

    #[test]
    fn profiles_and_their_fits_never_panic(text in csv("engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s", 10)) {
        if let Ok(set) = ProfileSet::parse(&source(text)) {
            // Absurd but parseable latencies (1e-300, 1e300) must fit or fail, not panic.
            let _ = LatencyModel::fit_all(&set);
        }
    }

    #[test]
    fn llm_traces_never_panic(text in csv("TIMESTAMP,ContextTokens,GeneratedTokens", 3)) {
        let _ = read_timestamps(&source(text));
    }

    #[test]
    fn function_counts_never_panic(text in csv("HashFunction,HashApp,HashOwner,minute_1,minute_2,minute_3", 6)) {
        let _ = FunctionCounts::parse(&source(text));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = ProfileSet::parse(&source(text.clone()));
        let _ = read_timestamps(&source(text.clone()));
        let _ = FunctionCounts::parse(&source(text));
    }
}
