//! containerd's runtime options `Any` (`runtimeoptions.v1.Options`), read by
//! the shim's own protobuf walk (`config_path_option`) for `ConfigPath`.
//! Properties: any bytes are walked without a panic; a message encoded with
//! the protobuf runtime gives back its last `config_path` (field 2).
#![no_main]

use arbitrary::Arbitrary;
use containerd_shim_kata_v2::service::create::config_path_option;
use libfuzzer_sys::fuzz_target;
use protocols::protobuf::well_known_types::any::Any;
use protocols::protobuf::CodedOutputStream;

#[derive(Debug, Arbitrary)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    ConfigPath(String),
}

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(Vec<u8>),
    Fields(Vec<Field>),
}

const TYPE_URL: &str = "containerd.runtime.v1.runtimeoptions.v1.Options";

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(value) => {
            let any = Any {
                type_url: TYPE_URL.into(),
                value,
                ..Default::default()
            };
            let _ = config_path_option(Some(&any));
        }
        Input::Fields(fields) => {
            let mut value = Vec::new();
            let mut want = None;
            {
                let mut os = CodedOutputStream::vec(&mut value);
                for f in &fields {
                    // Field numbers 1..2^29, never 2 except ConfigPath.
                    let n = |n: u32| (n % ((1 << 29) - 3)) + 3;
                    match f {
                        Field::Varint(k, v) => os.write_uint64(n(*k), *v),
                        Field::Fixed64(k, v) => os.write_fixed64(n(*k), *v),
                        Field::Fixed32(k, v) => os.write_fixed32(n(*k), *v),
                        Field::Bytes(k, v) => os.write_bytes(n(*k), v),
                        Field::ConfigPath(s) => {
                            want = Some(s.clone());
                            os.write_string(2, s)
                        }
                    }
                    .expect("encode");
                }
                os.flush().expect("flush");
            }
            let any = Any {
                type_url: TYPE_URL.into(),
                value,
                ..Default::default()
            };
            assert_eq!(config_path_option(Some(&any)), want);
        }
    }
});
