# DPO of an SFT run on the demo preference pairs (chosen: the real docstring; rejected: the same docstring with
# its words shuffled within each line, a fluent answer over a garbled one):
#   python train.py --task_type=dpo --init_from=out/sft              (this file is the default recipe of dpo)
# The policy starts from --init_from, which is also the frozen reference unless --ref_from is given.
task_type = "dpo"
out_dir = "out/dpo"
data_dir = ""

batch_size = 8  # preference pairs per micro-batch
gradient_accumulation_steps = 1
max_iters = 100
eval_interval = 25
eval_iters = 8
log_interval = 10
save_interval = 50
sample_tokens = 48

dpo_beta = 0.1
dpo_loss_type = "sigmoid"
learning_rate = 1e-4
min_lr = 1e-5
warmup_iters = 10
weight_decay = 0.0
grad_clip = 1.0
