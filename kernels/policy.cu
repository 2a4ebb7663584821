/*
 * policy.cu: the policy's actions drawn on the device from its log-probabilities (kernels/policy.cuh),
 * the draw the trainer makes on the host, so a learner on the GPU can step the env without copying
 * log-probabilities or actions to the host. One argument struct (`PolicySampleArgs`,
 * kernels/abi.cuh), one thread per row. Blocks of MARL_ROWS_BLOCK threads.
 */
#include "abi.cuh"

extern "C" __global__ void __launch_bounds__(MARL_ROWS_BLOCK) sample_policy(PolicySampleArgs a) {
    marl_sample_policy_thread(&a, (u64)blockIdx.x * blockDim.x + threadIdx.x);
}
