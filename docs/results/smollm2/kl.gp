# KL(full ‖ compressed) against the compression ratio, one line per press, from kvcompress-eval's results.csv
# (KL is per press and ratio, repeated on every task's row: the rows of niah_single_1 are plotted).
# Run in this folder: gnuplot kl.gp → kl.png
set terminal png noenhanced size 960,640
set output 'kl.png'
set title 'kvcompress-eval: SmolLM2-135M-Instruct, KL divergence on held-out prose'
set xlabel 'compression ratio (fraction of the KV cache removed)'
set ylabel 'KL(full || compressed), nats per token'
set grid
set key top left opaque box
presses = 'expected_attention snapkv tova knorm streaming_llm keydiff pyramidkv adakv_expected_attention'
# One task's rows carry every press × ratio once (the KL columns of a press × ratio are all equal).
rows(p) = sprintf("< awk -F, '$1 == \"%s\" && $3 == \"niah_single_1\" { print $2, $9 }' results.csv", p)
plot for [i=1:words(presses)] rows(word(presses, i)) using 1:2 with linespoints lw 2 pt i title word(presses, i)
