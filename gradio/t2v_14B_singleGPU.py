"""Gradio demo: text-to-video with the T2V-14B model (480P and 720P).

    python gradio/t2v_14B_singleGPU.py --ckpt_dir ./Wan2.1-T2V-14B

The page and its logic live in wan_demo.py beside this file; --help lists the options.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("t2v-14B")
