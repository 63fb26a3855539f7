//! RocksDB links as C++. When librocksdb-sys compiles RocksDB itself it also links the C++
//! standard library; when it links a prebuilt archive instead (`ROCKSDB_LIB_DIR` with
//! `ROCKSDB_STATIC`, as the Makefile does through scripts/rocksdb-prebuild.sh) it does
//! not, so this crate, the one that uses RocksDB, asks for it.

fn main() {
    // Nothing to link without the RocksDB store (the consensus crate's and the wallet's build).
    if std::env::var_os("CARGO_FEATURE_ROCKSDB").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    println!("cargo:rerun-if-env-changed=ROCKSDB_COMPILE");
    let prebuilt = std::env::var_os("ROCKSDB_LIB_DIR").is_some();
    let static_lib = std::env::var_os("ROCKSDB_STATIC").is_some();
    // librocksdb-sys's own switch back to compiling RocksDB (it then links the C++ library).
    let compiled =
        std::env::var("ROCKSDB_COMPILE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if prebuilt && static_lib && !compiled {
        // The library librocksdb-sys's build script picks for the target.
        let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        let cxx = match os.as_str() {
            "linux" | "android" => "stdc++",
            "windows" => return,
            _ => "c++",
        };
        println!("cargo:rustc-link-lib=dylib={cxx}");
    }
}
