//! Compiles proto/onnx.proto into prost types with protox (a protobuf compiler in pure
//! Rust), so building edgemed needs no protoc.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = protox::compile(["onnx.proto"], ["proto"]).unwrap_or_else(|e| panic!("proto/onnx.proto: {e}"));
    prost_build::Config::new().compile_fds(files).unwrap_or_else(|e| panic!("generating the ONNX types: {e}"));
}
