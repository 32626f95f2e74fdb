r"""Gradio demo: image-to-video with the I2V-14B-480P and/or -720P models.

    python gradio/i2v_14B_singleGPU.py --ckpt_dir_480p ./Wan2.1-I2V-14B-480P \
        --ckpt_dir_720p ./Wan2.1-I2V-14B-720P

The page and its logic live in wan_demo.py beside this file; --help lists the options.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("i2v-14B")
