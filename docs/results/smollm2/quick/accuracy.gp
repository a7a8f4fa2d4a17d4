set terminal png noenhanced size 960,640
set output 'accuracy.png'
set title "kvcompress-eval: SmolLM2-135M-Instruct.Q4_1.gguf"
set xlabel 'compression ratio (fraction of the KV cache removed)'
set ylabel 'accuracy (mean over tasks)'
set yrange [0:1.05]
set xrange [-0.03:0.93]
set grid
set key bottom left opaque box
set key autotitle columnheader
full = 0.277778
plot for [i=2:9] 'accuracy.dat' using 1:i with linespoints lw 2 pt i, \
     full with lines lc rgb 'gray30' lw 1 title 'full cache'
