#!/usr/bin/env bash
# One-off probe of a GPU machine (not part of the check): environment, LibTorch CUDA headers, a runtime-only build.
cd "$(dirname "$0")/../.."
O=${OUT:-/tmp/probe}; mkdir -p $O
{
cat /etc/os-release | head -3; nproc; free -g | head -2; nvidia-smi; which python3 g++ gcc cmake ninja nvcc ccache
python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI, torch.utils.cmake_prefix_path, torch.cuda.is_available())'
ls /usr/local/cuda/lib64 | head -50; ls /usr/local/cuda/include | grep -i -E "nccl|nvml|cudnn"
find / -xdev \( -name "nccl.h" -o -name "libnccl.so*" -o -name "libnvidia-ml.so*" -o -name "nvml.h" \) 2>/dev/null | head
} > $O/env.txt 2>&1
T=$(python3 -c 'import torch,os; print(os.path.dirname(torch.__file__))')
{
grep -n "getDeviceStats\|resetPeakStats\|setMemoryFraction\|emptyCache\|recordStream" $T/include/c10/cuda/CUDACachingAllocator.h | head -30
grep -rn "struct DeviceStats" -A30 $T/include/c10/core/CachingDeviceAllocator.h | head -60
grep -n "enum struct StatType\|enum class StatType" -A6 -r $T/include/c10/core/ $T/include/c10/cuda/ | head -20
grep -n "getStreamFromPool\|getCurrentCUDAStream\|setCurrentCUDAStream" $T/include/c10/cuda/CUDAStream.h | head
grep -n "class CUDAStreamGuard\|explicit CUDAStreamGuard" $T/include/c10/cuda/CUDAGuard.h | head
grep -n "void record\|void block\|bool query\|CUDAEvent(" $T/include/ATen/cuda/CUDAEvent.h | head
grep -n "OutOfMemoryError" $T/include/c10/util/Exception.h | head
ls $T/share/cmake
} > $O/headers.txt 2>&1
timeout 420 tests/gpu/check.sh --out $O --quick > $O/check-stdout.txt 2>&1
echo "check rc $?"
cp build-gpu/CMakeCache.txt $O/ 2>/dev/null
tail -5 $O/check.log
