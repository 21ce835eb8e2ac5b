"""The column layout of the Adam kernels' launch tables: the one definition that the kernels
(``kernels/adam.py``, which wraps each as ``tl.constexpr``) and the host that fills the tables
(``fastgd/optim/launch.py``) both read by name. Plain ints and no triton import, so the host
can use it without Triton.

Both tables are int64; a float is stored as its float64 bits.
"""

# The tensor table: one row per tensor of a launch.
T_PARAM = 0  # address of the parameter
T_GRAD = 1  # of its gradient
T_EXP_AVG = 2
T_EXP_AVG_SQ = 3
T_MAX_EXP_AVG_SQ = 4  # 0 when the tensor has none
T_STEP = 5  # address of the float32 0-dim step tensor
T_NUMEL = 6
T_FIRST_BLOCK = 7  # the launch's index of the tensor's first block
T_NUM_BLOCKS = 8  # at least 1, so that an empty tensor still counts its steps
T_GROUP = 9  # row in the group table
TENSOR_COLS = 10

# The group table: one row per param group. lr and the betas may be 0-dim tensors: each takes
# three columns, the value (used when KIND is KIND_VALUE), the tensor's address and the KIND.
G_FLAGS = 0  # FLAG_* bits
G_LR_VALUE = 1
G_LR_ADDRESS = 2
G_LR_KIND = 3
G_BETA1_VALUE = 4
G_BETA1_ADDRESS = 5
G_BETA1_KIND = 6
G_BETA2_VALUE = 7
G_BETA2_ADDRESS = 8
G_BETA2_KIND = 9
G_EPS = 10
G_WEIGHT_DECAY = 11
G_MAX_NORM = 12  # 0.0 when the group does not clip
GROUP_COLS = 13

FLAG_AMSGRAD = 1
FLAG_MAXIMIZE = 2
FLAG_DECOUPLED = 4
FLAG_CLIP = 8

KIND_VALUE = 0  # the value column holds it
KIND_FP32_TENSOR = 1  # a float32 0-dim tensor at the address
KIND_FP64_TENSOR = 2  # a float64 0-dim tensor at the address
