"""Hand-written gradients and operand layouts for XLA:CPU (the methods call
them; `hand_gradients` decides per platform where they run). They import no
method: a kernel is shared by the methods that need it."""
