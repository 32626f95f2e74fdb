"""Gradio demo: text-to-image with the T2V-14B model.

    python gradio/t2i_14B_singleGPU.py --ckpt_dir ./Wan2.1-T2V-14B

The page and its logic live in wan_demo.py beside this file; --help lists the options.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("t2i-14B")
