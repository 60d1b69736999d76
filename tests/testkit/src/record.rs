//! Records as a user's tooling reads them: checked against their published schemas.

/// Panics with every violation when `rec` does not match the per-pod record schema.
pub fn assert_valid(rec: &serde_json::Value) {
    against(
        include_str!("../../../crates/netready-record/pod-record.schema.json"),
        rec,
    );
}

/// Panics with every violation when `rec` does not match the container-command record schema.
pub fn assert_valid_command(rec: &serde_json::Value) {
    against(
        include_str!("../../../crates/netready-record/command-record.schema.json"),
        rec,
    );
}

fn against(schema: &str, rec: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(schema).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
    let errors: Vec<String> = validator
        .iter_errors(rec)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "record does not match its schema: {errors:#?}\n{rec:#}"
    );
}

/// The command records in the results file at `path`, of container `cid`.
pub fn commands_of(path: &std::path::Path, cid: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "command" && v["container_id"] == cid)
        .collect()
}
