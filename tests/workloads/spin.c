/* Never ends on its own: the wall-clock limit must stop it. */
int main(void) {
    volatile unsigned long long counter = 0;
    for (;;)
        counter++;
}
