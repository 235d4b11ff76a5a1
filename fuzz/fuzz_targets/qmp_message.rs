//! QMP lines from QEMU: `parse_message` and the JSON helpers applied to
//! what it returns. Properties: an accepted line is a JSON object, and the
//! message reflects its members; the vCPU list helpers give one entry per
//! array element; no input panics.
#![no_main]

use hypervisor::qmp::{parse_cpus_fast, parse_hotpluggable_cpus, parse_message, Message};
use hypervisor::VmEvent;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_message(line);
    let json: Option<Value> = serde_json::from_str(line).ok();
    let obj = json.as_ref().and_then(Value::as_object);
    match &parsed {
        Ok(m) => {
            let obj = obj.expect("accepted line is a JSON object");
            let id = obj.get("id").cloned();
            match m {
                Message::Greeting => assert!(obj.contains_key("QMP")),
                Message::Return { id: got, value } => {
                    assert!(!obj.contains_key("QMP"));
                    assert_eq!(Some(value), obj.get("return"));
                    assert_eq!(got, &id);
                }
                Message::Error { id: got, .. } => {
                    assert!(!obj.contains_key("QMP") && !obj.contains_key("return"));
                    assert!(obj.contains_key("error"));
                    assert_eq!(got, &id);
                }
                Message::Event { name, data } => {
                    assert_eq!(
                        obj.get("event").and_then(Value::as_str),
                        Some(name.as_str())
                    );
                    assert_eq!(data, obj.get("data").unwrap_or(&Value::Null));
                    let _ = VmEvent::from_qmp(name, data);
                }
            }
        }
        Err(_) => {
            if let Some(obj) = obj {
                assert!(
                    !obj.contains_key("QMP")
                        && !obj.contains_key("return")
                        && !obj.contains_key("error")
                        && !obj.get("event").is_some_and(Value::is_string),
                    "a well-formed message refused: {line:?}"
                );
            }
        }
    }
    // The helpers take any `return` value QEMU may send.
    if let Some(v) = &json {
        let want = v.as_array().map_or(0, Vec::len);
        assert_eq!(parse_cpus_fast(v).len(), want);
        assert_eq!(parse_hotpluggable_cpus(v).len(), want);
    }
});
