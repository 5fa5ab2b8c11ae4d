//! Compiles `proto/chorus/v1/*.proto` without `protoc`: protox parses them in Rust and
//! tonic-prost-build generates the code from the descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    let protos = [
        "../../proto/chorus/v1/peer.proto",
        "../../proto/chorus/v1/owner.proto",
        "../../proto/chorus/v1/admin.proto",
    ];
    let fds = protox::compile(protos, [root])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
