//! edgemed's own ONNX protobuf types (onnx/proto/onnx.proto) against files written by
//! other tools (torch.onnx's legacy and dynamo exporters, ONNX Runtime's quantizer, an
//! escnn export, AIMET, edgemed's exporters): a model decoded and re-encoded by
//! edgemed reads, in tract's independently generated ONNX types, as the original
//! file does, so no field those tools write is lost when the converter rewrites a
//! model (prost keeps no unknown fields). Bytes may differ: the files are proto2
//! encodings that keep explicit zero values, which proto3 omits.

use edgemed_onnx::pb;
use edgemed_runtime::tract_onnx::pb as tract_pb;
use prost::Message;

fn onnx_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            onnx_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "onnx") {
            out.push(p);
        }
    }
}

#[test]
fn committed_models_keep_every_field_through_a_round_trip() {
    let mut files = Vec::new();
    onnx_files(&edgemed_tests::repo_root().join("tests/fixtures"), &mut files);
    files.push(edgemed_tests::repo_root().join("models/bundled/pcam-c4-demo.onnx"));
    assert!(files.len() > 20, "found only {} models", files.len());
    let mut differ = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let m = pb::ModelProto::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let original = tract_pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let again = tract_pb::ModelProto::decode(m.encode_to_vec().as_slice()).unwrap();
        if again != original {
            differ.push(f.display().to_string());
        }
    }
    println!("{} models decoded and re-encoded", files.len());
    assert!(differ.is_empty(), "re-encoded models read differently: {differ:?}");
}
