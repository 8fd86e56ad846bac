# Finds the project's Python environment and points find_package(Torch) at the LibTorch inside its torch wheel.
# REEL_PYTHON: the interpreter (default .venv/bin/python in the source tree, made by scripts/install_deps.sh).
if(NOT REEL_PYTHON)
  if(DEFINED ENV{REEL_VENV})
    set(REEL_PYTHON "$ENV{REEL_VENV}/bin/python")
  else()
    set(REEL_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python")
  endif()
endif()
set(REEL_PYTHON "${REEL_PYTHON}" CACHE FILEPATH "Python with torch, whose LibTorch Reel builds against")
if(NOT EXISTS "${REEL_PYTHON}")
  message(FATAL_ERROR "REEL_PYTHON ${REEL_PYTHON} does not exist: run scripts/install_deps.sh (it makes .venv), or "
                      "pass -DREEL_PYTHON=/path/to/python with torch installed")
endif()
execute_process(COMMAND "${REEL_PYTHON}" -c "import torch, torch.utils; print(torch.utils.cmake_prefix_path)"
                OUTPUT_VARIABLE REEL_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "REEL_PYTHON ${REEL_PYTHON} cannot import torch (${err}): run scripts/install_deps.sh")
endif()
list(PREPEND CMAKE_PREFIX_PATH "${REEL_TORCH_PREFIX}")
# A build folder configured before against another LibTorch (Debian's 1.13) keeps Torch_DIR in its cache: replace it.
set(Torch_DIR "${REEL_TORCH_PREFIX}/Torch" CACHE PATH "LibTorch's CMake config (from REEL_PYTHON's torch)" FORCE)
set(Caffe2_DIR "${REEL_TORCH_PREFIX}/Caffe2" CACHE PATH "LibTorch's Caffe2 config (from REEL_PYTHON's torch)" FORCE)
message(STATUS "Reel: LibTorch from ${REEL_TORCH_PREFIX} (${REEL_PYTHON})")
