r"""Gradio demo: Wan2.2 TI2V-5B, text-to-video and (with an image) image-to-video, 24 fps.

    python gradio/ti2v_5B_singleGPU.py --ckpt_dir ./Wan2.2-TI2V-5B

The page and its logic live in wan_demo.py beside this file; --help lists the options.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("ti2v-5B")
