# Builds Reel against the CPU half of PyTorch's wheel (the CUDA build that scripts/requirements.txt pins), with no
# CUDA toolkit installed and without linking a CUDA library of LibTorch: CMakeLists.txt includes it before
# find_package(Torch) when REEL_WITH_CUDA is OFF, or AUTO on a machine without a CUDA toolkit (the CPU image,
# deploy/docker/Dockerfile, configures with REEL_WITH_CUDA=OFF). It also works as -DCMAKE_PROJECT_reel_INCLUDE.
#
# 1. The wheel's Caffe2Config.cmake includes public/cuda.cmake, which needs nvcc and the toolkit's headers (the
#    wheel's nvidia-* packages carry neither) and otherwise stops with "Your installed Caffe2 version uses CUDA but
#    I cannot find the CUDA libraries". cuda.cmake returns at once when torch::cudart exists ("poor man's include
#    guard"), so it is declared here, empty: the only CUDA target the wheel's exported targets name (c10_cuda,
#    torch_cuda, neither linked below).
# 2. The wheel's TORCH_LIBRARIES force-link (--no-as-needed) libtorch.so and libtorch_cuda.so, and libtorch.so
#    itself needs libtorch_cuda.so, which needs cuDNN, cuBLAS, cuFFT, cuSPARSE(Lt), NCCL, NVSHMEM... (about 3 GiB).
#    Once the whole tree is configured, `torch` and `torch_library` are pointed at torch_cpu_library alone, so `reel`
#    links libtorch_cpu.so and libc10.so (libtorch.so and libc10_cuda.so stay on the line, --as-needed: no symbol of
#    Reel's binds to them, so they are dropped). libtorch_cpu.so still needs libcudart.so.13 and libcupti.so.13 from
#    the wheel's nvidia-cuda-runtime and nvidia-cuda-cupti: small, and they load without a GPU or a driver.
# tests/deploy/dockerfile_test.py checks both on a configure with no CUDA toolkit in sight.
if(NOT REEL_WITH_CUDA STREQUAL "OFF")
  message(FATAL_ERROR "torch_cpu_only.cmake builds without LibTorch's CUDA half: configure with -DREEL_WITH_CUDA=OFF")
endif()
if(NOT TARGET torch::cudart)
  add_library(torch::cudart INTERFACE IMPORTED)
endif()

function(reel_torch_cpu_only)
  foreach(t torch torch_library torch_cpu_library)
    if(NOT TARGET ${t})
      message(FATAL_ERROR "torch_cpu_only.cmake: LibTorch's target ${t} is missing (find_package(Torch) changed?)")
    endif()
  endforeach()
  set_target_properties(torch torch_library PROPERTIES INTERFACE_LINK_LIBRARIES torch_cpu_library)
  message(STATUS "Reel: linking LibTorch's CPU libraries only (libtorch_cpu, libc10), not libtorch/libtorch_cuda")
endfunction()
cmake_language(DEFER CALL reel_torch_cpu_only)
