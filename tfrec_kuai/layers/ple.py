"""PLE-style experts (Progressive Layered Extraction, Tang et al., RecSys 2020).

The objectives differ: like / follow / hate are separate decisions from "how long will the user
watch". Shared experts carry what they have in common, task-specific experts what they do not,
and a per-task softmax gate mixes the task's own experts with the shared ones, so a task can
ignore what hurts it (negative transfer) instead of being forced through one shared bottom.
"""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf


class ExpertGroup(tf.keras.layers.Layer):
    """``E`` independent one-layer ReLU experts computed as one batched einsum.

    Input ``[B, F]`` (shared input) or ``[B, E, F]`` (one input per expert); output ``[B, E, U]``.
    """

    def __init__(self, num_experts, units, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = int(num_experts)
        self.units = int(units)

    def build(self, input_shape):
        f = int(input_shape[-1])
        self.kernel = self.add_weight("kernel", [self.num_experts, f, self.units],
                                      initializer=tf.keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal"))
        self.bias = self.add_weight("bias", [self.num_experts, self.units], initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        if x.shape.rank == 2:
            y = tf.einsum("bf,efu->beu", x, self.kernel)
        else:
            y = tf.einsum("bef,efu->beu", x, self.kernel)
        return tf.nn.relu(y + self.bias)

    def get_config(self):
        config = super().get_config()
        config.update({"num_experts": self.num_experts, "units": self.units})
        return config


def _mix(gate, experts):
    """``Σ_e gate[b, e] · experts[b, e, :]``: ``[B, E]``, ``[B, E, U]`` → ``[B, U]``.

    Broadcast multiply and sum rather than concatenating the expert groups and a batched
    ``einsum("be,beu->bu")`` (B tiny products): the same numbers, far fewer memory copies.
    """
    return tf.reduce_sum(gate[:, :, tf.newaxis] * experts, 1)


class CGCLayer(tf.keras.layers.Layer):
    """One PLE extraction level (Customized Gate Control).

    Call: ``inputs`` is ``[B, F]`` (first level, every gate reads it) or a list of ``T + 1``
    tensors ``[B, F]`` (task inputs then the shared input, from a previous level).
    Returns a list of ``T`` task outputs ``[B, U]``, plus the shared output ``[B, U]`` as the last
    element when ``output_shared=True`` (needed to stack levels).
    """

    def __init__(self, num_tasks, num_shared_experts=2, num_task_experts=1, units=64, output_shared=False, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = int(num_tasks)
        self.num_shared_experts = int(num_shared_experts)
        self.num_task_experts = int(num_task_experts)
        self.units = int(units)
        self.output_shared = bool(output_shared)
        self.shared_experts = ExpertGroup(self.num_shared_experts, self.units, name="shared_experts")
        self.task_experts = [ExpertGroup(self.num_task_experts, self.units, name=f"task{t}_experts")
                             for t in range(self.num_tasks)]
        self.task_gates = [tf.keras.layers.Dense(self.num_task_experts + self.num_shared_experts,
                                                 activation="softmax", name=f"task{t}_gate")
                           for t in range(self.num_tasks)]
        if self.output_shared:
            self.shared_gate = tf.keras.layers.Dense(
                self.num_tasks * self.num_task_experts + self.num_shared_experts, activation="softmax",
                name="shared_gate")

    def split_inputs(self, inputs):
        """``(task_inputs, shared_input)``: a list of ``T`` ``[B, F]`` tensors and one ``[B, F]``."""
        if isinstance(inputs, (list, tuple)):
            return list(inputs[:-1]), inputs[-1]
        return [inputs] * self.num_tasks, inputs

    def task_gate_weights(self, inputs):
        """Each task's gate, ``T`` tensors ``[B, E+S]`` (own experts first, then the shared ones):
        what a trained model's expert use is read from (benchmarks/ple_gate_usage.py)."""
        task_inputs, _ = self.split_inputs(inputs)
        return [gate(x) for gate, x in zip(self.task_gates, task_inputs)]

    def call(self, inputs):
        task_inputs, shared_input = self.split_inputs(inputs)
        shared = self.shared_experts(shared_input)                          # [B, S, U]
        e = self.num_task_experts
        outputs, all_task_experts = [], []
        for t in range(self.num_tasks):
            own = self.task_experts[t](task_inputs[t])                      # [B, E, U]
            all_task_experts.append(own)
            gate = self.task_gates[t](task_inputs[t])                         # [B, E+S]: own, then shared
            outputs.append(_mix(gate[:, :e], own) + _mix(gate[:, e:], shared))
        if self.output_shared:
            gate = self.shared_gate(shared_input)                            # [B, T*E+S]
            mixed = [_mix(gate[:, t * e:(t + 1) * e], own) for t, own in enumerate(all_task_experts)]
            outputs.append(tf.add_n(mixed + [_mix(gate[:, self.num_tasks * e:], shared)]))
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"num_tasks": self.num_tasks, "num_shared_experts": self.num_shared_experts,
                       "num_task_experts": self.num_task_experts, "units": self.units,
                       "output_shared": self.output_shared})
        return config


class SharedBottom(tf.keras.layers.Layer):
    """The baseline the experts are measured against: one MLP whose output every task reads.

    Input ``[B, F]``; returns a list of ``num_tasks`` references to the same ``[B, units[-1]]``.
    """

    def __init__(self, num_tasks, units=(128, 64), **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = int(num_tasks)
        self.units = [int(u) for u in units]
        self.mlp = [tf.keras.layers.Dense(u, activation="relu", name=f"dense{i}") for i, u in enumerate(self.units)]

    def call(self, x):
        for layer in self.mlp:
            x = layer(x)
        return [x] * self.num_tasks

    def get_config(self):
        config = super().get_config()
        config.update({"num_tasks": self.num_tasks, "units": self.units})
        return config
