# SFT of a pretrained run on the demo conversations (write the docstring of a stdlib function):
#   python train.py --task_type=sft --init_from=out/default        (this file is the default recipe of sft)
# The model shape comes from the --init_from run. data_dir = "" uses the demo set; give a .jsonl/.json/.parquet
# file or dir of {"messages": [...]}, ShareGPT or Alpaca records (or a pretokenize_sft dir) for your own.
task_type = "sft"
out_dir = "out/sft"
data_dir = ""
pack_sequences = True

batch_size = 8  # packed rows of max_seq_len tokens
gradient_accumulation_steps = 1
max_iters = 150
eval_interval = 50
eval_iters = 8
log_interval = 10
save_interval = 50
sample_tokens = 48

learning_rate = 5e-4
min_lr = 5e-5
warmup_iters = 10
weight_decay = 0.0
grad_clip = 1.0
