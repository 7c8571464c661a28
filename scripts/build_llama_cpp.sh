#!/usr/bin/env bash
# Build llama.cpp for the GGUF checks (`make llama-cpp`): the llama-cpp-python sdist vendors all of llama.cpp (PyPI
# has no binary wheel for it), so one download gives the C++ library, llama-bench, llama-server (the serving
# benchmark's CPU anchor) and the Python binding that reads next-token logits. Everything lands in $LLAMA_CPP_DIR (default .cache/llama-cpp, git-ignored); never part of
# `make install` or `make test`. Minutes on 2 cores (gcc, cmake); a second call finds the build and does nothing.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
DIR=${LLAMA_CPP_DIR:-.cache/llama-cpp}
JOBS=${JOBS:-$(nproc)}
STAMP="$DIR/.built-$VERSION-server"  # an older build without llama-server is completed (cmake rebuilds what is new)

if [[ -f "$STAMP" ]]; then
    echo "llama.cpp $VERSION already built in $DIR"
    exit 0
fi
command -v cmake >/dev/null || { echo "cmake not found: install it (apt-get install cmake)"; exit 1; }
mkdir -p "$DIR"
SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    "$PYTHON" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$DIR"
fi
SRC="$DIR/llama_cpp_python-$VERSION"
[[ -d "$SRC" ]] || tar xzf "$SDIST" -C "$DIR"

# the library (shared, for the binding), llama-bench and llama-server without its web UI (that would be built with
# npm or downloaded); no tests, examples or network support
cmake -S "$SRC/vendor/llama.cpp" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >/dev/null
cmake --build "$DIR/build" -j "$JOBS" --target llama llama-bench llama-server

# the binding: its pure-Python package, with the libraries where it looks for them (llama_cpp/lib)
PY="$DIR/python"
rm -rf "$PY" && mkdir -p "$PY"
cp -r "$SRC/llama_cpp" "$PY/llama_cpp"
mkdir -p "$PY/llama_cpp/lib"
cp -P "$DIR"/build/bin/lib*.so* "$PY/llama_cpp/lib/"
"$PYTHON" -m pip install -q --no-deps --target "$PY" "diskcache>=5.6"  # the binding imports it at start
touch "$STAMP"
echo "llama.cpp $VERSION built in $DIR (binding: PYTHONPATH=$PY, bench and server: $DIR/build/bin/llama-{bench,server})"
